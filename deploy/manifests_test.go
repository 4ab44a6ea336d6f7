package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// podMonitor is monitoring.coreos.com/v1 PodMonitor, the fields used here as
// the Prometheus Operator's CRD names them. Its Go types are not in
// k8s.io/api, and the operator's module needs a newer Go and k8s.io/api
// than go.mod's: decoded strictly, a misspelt field still fails.
type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector            metav1.LabelSelector `json:"selector"`
		PodMetricsEndpoints []struct {
			Port        string `json:"port"`
			Path        string `json:"path"`
			Interval    string `json:"interval"`
			Relabelings []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
			} `json:"relabelings"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

// manifests are the objects of deploy/kubernetes, each decoded strictly
// (an unknown or misspelt field, a duplicate key, a second document fail).
type manifests struct {
	namespace  *corev1.Namespace
	account    *corev1.ServiceAccount
	daemonSet  *appsv1.DaemonSet
	service    *corev1.Service
	podMonitor *podMonitor
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in deploy/kubernetes: %v", err)
	}
	var m manifests
	// Each kind's object, set in m as it is decoded.
	kinds := map[string]func() any{
		"v1 Namespace":                        func() any { m.namespace = &corev1.Namespace{}; return m.namespace },
		"v1 ServiceAccount":                   func() any { m.account = &corev1.ServiceAccount{}; return m.account },
		"apps/v1 DaemonSet":                   func() any { m.daemonSet = &appsv1.DaemonSet{}; return m.daemonSet },
		"v1 Service":                          func() any { m.service = &corev1.Service{}; return m.service },
		"monitoring.coreos.com/v1 PodMonitor": func() any { m.podMonitor = &podMonitor{}; return m.podMonitor },
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte("\n---")) {
			t.Fatalf("%s: one object per file (kubectl apply -f reads them all)", f)
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(data, &tm); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		newObj, ok := kinds[tm.APIVersion+" "+tm.Kind]
		if !ok {
			t.Fatalf("%s: %s %s is not a kind this test decodes: add it", f, tm.APIVersion, tm.Kind)
		}
		obj := newObj()
		if err := yaml.UnmarshalStrict(data, obj); err != nil {
			t.Fatalf("yaml.UnmarshalStrict(%s) = %v, want nil", f, err)
		}
	}
	for name, missing := range map[string]bool{"Namespace": m.namespace == nil, "ServiceAccount": m.account == nil,
		"DaemonSet": m.daemonSet == nil, "Service": m.service == nil, "PodMonitor": m.podMonitor == nil} {
		if missing {
			t.Fatalf("deploy/kubernetes has no %s", name)
		}
	}
	return m
}

// container is the DaemonSet's one container.
func (m manifests) container(t *testing.T) corev1.Container {
	t.Helper()
	cs := m.daemonSet.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("DaemonSet has %d containers, want 1", len(cs))
	}
	return cs[0]
}

// addedCapabilities is what the DaemonSet gives lbdoctor, as CAP_ names.
func (m manifests) addedCapabilities(t *testing.T) []string {
	t.Helper()
	sc := m.container(t).SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("DaemonSet's container has no capabilities")
	}
	var caps []string
	for _, c := range sc.Capabilities.Add {
		caps = append(caps, "CAP_"+string(c))
	}
	return caps
}

// wantCapabilities are the capabilities lbdoctor serve uses in the host's
// namespace, each proven needed by TestCapabilities.
var wantCapabilities = []string{"CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON", "CAP_SYSLOG", "CAP_NET_RAW"}

// servePort is serve's port in the manifests (its default listen port).
const servePort = 9469

func TestManifests(t *testing.T) {
	m := loadManifests(t)
	c := m.container(t)
	pod := m.daemonSet.Spec.Template
	podLabels := pod.Labels

	t.Run("namespace", func(t *testing.T) {
		for kind, ns := range map[string]string{"ServiceAccount": m.account.Namespace, "DaemonSet": m.daemonSet.Namespace,
			"Service": m.service.Namespace, "PodMonitor": m.podMonitor.Namespace} {
			if ns != m.namespace.Name {
				t.Errorf("%s namespace = %q, want %q", kind, ns, m.namespace.Name)
			}
		}
		if got := m.namespace.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
			t.Errorf("Namespace pod-security enforce = %q, want privileged (host network and capabilities)", got)
		}
	})
	t.Run("host", func(t *testing.T) {
		spec := pod.Spec
		if !spec.HostNetwork {
			t.Error("DaemonSet hostNetwork = false, want true: the node's namespace is the one to doctor")
		}
		if spec.HostPID {
			t.Error("DaemonSet hostPID = true, want false: the host's namespace needs no other process")
		}
		if spec.ServiceAccountName != m.account.Name {
			t.Errorf("DaemonSet serviceAccountName = %q, want %q", spec.ServiceAccountName, m.account.Name)
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Error("DaemonSet mounts an API token, want none: lbdoctor never calls the API")
		}
		if !slices.ContainsFunc(spec.Tolerations, func(tl corev1.Toleration) bool {
			return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
		}) {
			t.Errorf("DaemonSet tolerations = %v, want one that tolerates every taint (every node)", spec.Tolerations)
		}
	})
	t.Run("capabilities", func(t *testing.T) {
		sc := c.SecurityContext
		if got := m.addedCapabilities(t); !slices.Equal(got, wantCapabilities) {
			t.Errorf("DaemonSet capabilities add = %v, want %v", got, wantCapabilities)
		}
		if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("DaemonSet capabilities drop = %v, want [ALL]", sc.Capabilities.Drop)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Error("DaemonSet container privileged, want only the capabilities it needs")
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Error("DaemonSet root filesystem writable, want read-only: lbdoctor serve writes nothing")
		}
		// Each capability is named with why in a comment above it.
		data, _ := os.ReadFile("kubernetes/daemonset.yaml")
		for _, cap := range sc.Capabilities.Add {
			if !regexp.MustCompile(`#[^\n]*\n\s+- ` + string(cap) + `\n`).Match(data) {
				t.Errorf("daemonset.yaml: capability %s has no comment saying why", cap)
			}
		}
	})
	t.Run("mounts", func(t *testing.T) {
		volumes := map[string]corev1.Volume{}
		for _, v := range pod.Spec.Volumes {
			volumes[v.Name] = v
		}
		// Where lbdoctor reads each: probes/kernel (BTF, tracefs and its old
		// place under debugfs), internal/netns (/run/netns), --netns PATH.
		want := map[string]string{
			"/sys/kernel/btf": "/sys/kernel/btf", "/sys/kernel/tracing": "/sys/kernel/tracing",
			"/sys/kernel/debug": "/sys/kernel/debug", "/run/netns": "/run/netns", "/host/proc": "/proc",
		}
		got := map[string]string{}
		for _, vm := range c.VolumeMounts {
			v, ok := volumes[vm.Name]
			if !ok || v.HostPath == nil {
				t.Errorf("mount %s: volume %q is not a hostPath volume of the pod", vm.MountPath, vm.Name)
				continue
			}
			if !vm.ReadOnly {
				t.Errorf("mount %s is writable, want read-only: lbdoctor only reads the host", vm.MountPath)
			}
			got[vm.MountPath] = v.HostPath.Path
		}
		for mnt, host := range want {
			if got[mnt] != host {
				t.Errorf("mount %s = host %q, want host %q", mnt, got[mnt], host)
			}
		}
		for mnt := range got {
			if _, ok := want[mnt]; !ok {
				t.Errorf("mount %s: lbdoctor reads nothing there, want it gone", mnt)
			}
		}
	})
	t.Run("listen and probes", func(t *testing.T) {
		if len(c.Args) == 0 || c.Args[0] != "serve" {
			t.Fatalf("DaemonSet args = %v, want serve first", c.Args)
		}
		if !slices.Contains(c.Args, "--listen=$(NODE_IP):"+itoa(servePort)) {
			t.Errorf("DaemonSet args = %v, want --listen=$(NODE_IP):%d", c.Args, servePort)
		}
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == "NODE_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.hostIP"
		}) {
			t.Errorf("DaemonSet env = %v, want NODE_IP from status.hostIP", c.Env)
		}
		if len(c.Ports) != 1 || c.Ports[0].ContainerPort != servePort || c.Ports[0].Name != "metrics" {
			t.Fatalf("DaemonSet ports = %v, want metrics %d", c.Ports, servePort)
		}
		for name, p := range map[string]*corev1.Probe{"startupProbe": c.StartupProbe, "readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
			if p == nil || p.HTTPGet == nil {
				t.Errorf("%s = %v, want an HTTP GET of /healthz", name, p)
				continue
			}
			if p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port != intstr.FromString("metrics") || p.HTTPGet.Host != "" {
				t.Errorf("%s = GET %s:%s%s, want GET the pod's address :metrics/healthz", name, p.HTTPGet.Host, p.HTTPGet.Port.String(), p.HTTPGet.Path)
			}
		}
		a := pod.Annotations
		if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != itoa(servePort) || a["prometheus.io/path"] != "/metrics" {
			t.Errorf("pod annotations = %v, want prometheus.io scrape of :%d/metrics", a, servePort)
		}
	})
	t.Run("resources", func(t *testing.T) {
		r := c.Resources
		for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, lim := r.Requests[name], r.Limits[name]
			if req.IsZero() || lim.IsZero() || req.Cmp(lim) > 0 {
				t.Errorf("%s request %s, limit %s: want both, request <= limit", name, req.String(), lim.String())
			}
		}
	})
	t.Run("service and podmonitor", func(t *testing.T) {
		s := m.service.Spec
		if s.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("Service clusterIP = %q, want None (headless: each node is scraped)", s.ClusterIP)
		}
		if !selects(s.Selector, podLabels) || !selects(m.podMonitor.Spec.Selector.MatchLabels, podLabels) {
			t.Errorf("Service selector %v, PodMonitor selector %v: want both to select the pods %v", s.Selector, m.podMonitor.Spec.Selector.MatchLabels, podLabels)
		}
		if len(s.Ports) != 1 || s.Ports[0].Port != servePort || s.Ports[0].TargetPort != intstr.FromString("metrics") {
			t.Errorf("Service ports = %v, want %d → metrics", s.Ports, servePort)
		}
		eps := m.podMonitor.Spec.PodMetricsEndpoints
		if len(eps) != 1 || eps[0].Port != "metrics" || eps[0].Path != "/metrics" {
			t.Errorf("PodMonitor endpoints = %+v, want port metrics, path /metrics", eps)
		}
		if !selects(m.daemonSet.Spec.Selector.MatchLabels, podLabels) {
			t.Errorf("DaemonSet selector %v does not select its pods %v", m.daemonSet.Spec.Selector.MatchLabels, podLabels)
		}
	})
	t.Run("serve flags", func(t *testing.T) {
		out := serveHelp(t)
		for _, a := range c.Args[1:] {
			flag, _, _ := strings.Cut(a, "=")
			if !strings.HasPrefix(flag, "--") {
				t.Errorf("DaemonSet arg %q: want --flag=value", a)
				continue
			}
			if !regexp.MustCompile(`(?m)^\s+(-\w, )?` + regexp.QuoteMeta(flag) + `\b`).MatchString(out) {
				t.Errorf("DaemonSet arg %q: lbdoctor serve --help has no %s", a, flag)
			}
		}
	})
}

// serveHelp is `lbdoctor serve --help`, the verb the DaemonSet runs.
func serveHelp(t *testing.T) string {
	t.Helper()
	testkit.RequireRoot(t) // builds and runs the binary like the other host tests
	out, code := testkit.RunLbdoctor(t, "serve", "--help")
	// cobra answers --help of a verb it lacks with the root's help, exit 0.
	if code != 0 || !strings.Contains(out, "lbdoctor serve") {
		t.Fatalf("lbdoctor serve --help = exit %d without serve's usage, want it: the DaemonSet runs `lbdoctor serve`\n%s", code, out)
	}
	return out
}

// selects reports whether every label of sel is on the pod.
func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func itoa(n int) string { return strconv.Itoa(n) }
