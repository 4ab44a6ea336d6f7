package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// need finds a tool the test runs; CI installs it (.ci/run), elsewhere its
// absence skips.
func need(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	if testkit.InCI() {
		t.Fatalf("%s not found: .ci/run installs Debian's %s", tool, pkg)
	}
	t.Skipf("needs %s (Debian package %s)", tool, pkg)
	return ""
}

func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestImage builds the image from the Containerfile with podman, as `make
// image` does (podman builds here; it cannot run containers on this kind
// of machine), takes its filesystem out of a created, never started,
// container, and runs the image's own lbdoctor in it (chroot, in a test
// namespace) the way the runtime would: it must read the rules of all
// three backends with the image's tools.
func TestImage(t *testing.T) {
	testkit.RequireRoot(t)
	img := buildImage(t)
	t.Run("rules", func(t *testing.T) { imageReadsRules(t, img) })
	t.Run("serve", func(t *testing.T) { imageServes(t, img) })
}

// image is a built image's filesystem, taken out of it, and its config.
type image struct {
	root       string // its filesystem
	entrypoint []string
	path       string // its PATH
}

func buildImage(t *testing.T) image {
	t.Helper()
	podman := need(t, "podman", "podman")
	need(t, "apt-get", "apt")
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}

	// The build context, as make lays it out in bin/.
	ctx := t.TempDir()
	ctxBin := filepath.Join(ctx, "bin")
	if err := os.MkdirAll(ctxBin, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, repo, "cp", testkit.LbdoctorBinary(t), filepath.Join(ctxBin, "lbdoctor"))
	run(t, repo, "cp", ".containerignore", ctx)
	bctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := BuildImageRoot(bctx, filepath.Join(ctxBin, "image-root")); err != nil {
		t.Fatalf("BuildImageRoot: %v", err)
	}
	tag := "localhost/" + testkit.UniqueName("lbd-image") + ":test"
	run(t, repo, podman, "build", "-q", "--layers=false", "-f", filepath.Join(repo, "Containerfile"), "-t", tag, ctx)
	t.Cleanup(func() { exec.Command(podman, "rmi", "-f", tag).Run() })

	var cfg []struct {
		Config struct{ Entrypoint, Cmd, Env []string }
	}
	if err := json.Unmarshal([]byte(run(t, repo, podman, "image", "inspect", tag)), &cfg); err != nil || len(cfg) != 1 {
		t.Fatalf("podman image inspect %s: %v", tag, err)
	}
	c := cfg[0].Config
	if strings.Join(c.Entrypoint, " ") != "/usr/local/bin/lbdoctor" || strings.Join(c.Cmd, " ") != "serve" {
		t.Errorf("image runs %v %v, want /usr/local/bin/lbdoctor serve", c.Entrypoint, c.Cmd)
	}
	var path string
	for _, e := range c.Env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	if !strings.Contains(path, "/usr/sbin") {
		t.Errorf("image PATH = %q, want /usr/sbin in it (the iptables and nft tools)", path)
	}

	// Its filesystem: create (not start) a container and export it.
	id := strings.TrimSpace(run(t, repo, podman, "create", tag))
	t.Cleanup(func() { exec.Command(podman, "rm", "-f", id).Run() })
	root := t.TempDir()
	tarball := filepath.Join(t.TempDir(), "image.tar")
	run(t, repo, podman, "export", "-o", tarball, id)
	run(t, repo, "tar", "-xf", tarball, "-C", root)
	// Where the runtime mounts /proc, /sys and /dev (image.command).
	for _, d := range []string{"proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return image{root: root, entrypoint: c.Entrypoint, path: path}
}

// command is what a runtime runs for the image's container in ns: argv (an
// image path first) chrooted into the image's filesystem, with /proc, /sys
// and /dev (the tools' stdin is /dev/null) mounted in a mount namespace of
// its own (gone with it), the image's PATH as its whole environment and
// only caps (CAP_ names) in its bounding set: root's exec holds just those
// (and SYS_CHROOT, which chroot needs on the way; lbdoctor never uses it).
func (img image) command(caps []string, argv ...string) *exec.Cmd {
	set := boundingSet(caps, "+sys_chroot")
	const script = `root=$1 path=$2 set=$3; shift 3
mount -t proc proc "$root/proc" && mount --rbind /sys "$root/sys" && mount --rbind /dev "$root/dev" &&
exec env -i PATH="$path" setpriv --bounding-set="$set" --inh-caps=-all -- chroot "$root" "$@"`
	return exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", img.root, img.path, set}, argv...)...)
}

// imageReadsRules runs the image's lbdoctor inspect, with the DaemonSet's
// capabilities, in a namespace with a rule in each backend: it must read
// all three with the image's tools.
func imageReadsRules(t *testing.T, img image) {
	caps := loadManifests(t).addedCapabilities(t)
	ns := testkit.Netns(t, "image")
	testkit.Run(t, ns, "nft", "add table ip lbdimg; add chain ip lbdimg in { type filter hook input priority 0; }; add rule ip lbdimg in tcp dport 8081 counter drop")
	testkit.Run(t, ns, "iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "8082", "-j", "DROP")
	testkit.Run(t, ns, "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "8083", "-j", "DROP")
	var out []byte
	err := ns.Do(func() error {
		// The child is forked from this thread, inside ns.
		cmd := img.command(caps, append(slices.Clone(img.entrypoint), "inspect", "-o", "json")...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		var err error
		if out, err = cmd.Output(); err != nil {
			return fmt.Errorf("%w: %s", err, stderr.String())
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the image's lbdoctor inspect -o json: %v\n%s", err, out)
	}
	read := map[string]int{}
	for name, b := range ruleBackends(t, string(out)) {
		if !b.Read {
			t.Errorf("the image's lbdoctor left backend %s unread: %s", name, b.Reason)
		}
		read[name] = b.Rules
	}
	for _, be := range []string{"iptables-legacy", "iptables-nft", "nft"} {
		if read[be] != 1 {
			t.Errorf("the image's lbdoctor read %d rules from %s, want 1", read[be], be)
		}
	}
}

// imageServes runs the image as the DaemonSet runs it — its entrypoint with
// the manifest's args ($(NODE_IP) expanded as the kubelet does), its
// capabilities, the node's network namespace — and asks what the kubelet
// and Prometheus ask: the startup probe's /healthz within its budget, then
// /metrics; SIGTERM must end it within the grace period, exit 0.
func imageServes(t *testing.T, img image) {
	m := loadManifests(t)
	c := m.container(t)
	pod := m.daemonSet.Spec.Template.Spec
	ns := testkit.Netns(t, "node")
	const nodeIP = "192.0.2.10" // TEST-NET-1, on the test namespace's lo
	testkit.Run(t, ns, "ip", "link", "set", "lo", "up")
	testkit.Run(t, ns, "ip", "addr", "add", nodeIP+"/32", "dev", "lo")
	args := slices.Clone(c.Args)
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "$(NODE_IP)", nodeIP)
	}

	var stderr bytes.Buffer
	cmd := img.command(m.addedCapabilities(t), append(slices.Clone(img.entrypoint), args...)...)
	cmd.Stderr = &stderr
	if err := ns.Do(cmd.Start); err != nil {
		t.Fatalf("start the image's lbdoctor %v: %v", args, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	})

	// GET from inside the node's namespace, as the kubelet and Prometheus
	// reach the pod's (the node's) address.
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = ns.Do(func() error {
				var d net.Dialer
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	port := c.Ports[0].ContainerPort
	get := func(path string) (int, string) {
		resp, err := client.Get(fmt.Sprintf("http://%s:%d%s", nodeIP, port, path))
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp.StatusCode, string(body)
	}
	sp := c.StartupProbe
	budget := time.Duration(sp.PeriodSeconds*sp.FailureThreshold) * time.Second
	start := time.Now()
	code, body := 0, ""
	for time.Since(start) < budget {
		select {
		case err := <-exited:
			t.Fatalf("the image's lbdoctor %v exited before it was ready: %v\n%s", args, err, stderr.String())
		case <-time.After(time.Second):
		}
		if code, body = get(sp.HTTPGet.Path); code == http.StatusOK {
			break
		}
	}
	if code != http.StatusOK {
		t.Fatalf("GET %s = %d %q after %s (the startup probe's budget), want 200\n%s", sp.HTTPGet.Path, code, body, budget, stderr.String())
	}
	t.Logf("ready after %s", time.Since(start).Round(time.Second))
	code, body = get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d, want 200\n%s", code, body)
	}
	// The alert rules' metrics are served (the drop counters only once a
	// watched flow is dropped: this namespace has no service).
	rules, err := os.ReadFile("prometheus/lbdoctor-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range regexp.MustCompile(`\blbdoctor_[a-z_]+`).FindAllString(string(rules), -1) {
		if name != "lbdoctor_drops_total" && name != "lbdoctor_service_drops_total" && !strings.Contains(body, "\n"+name+"{") {
			t.Errorf("GET /metrics has no %s, which lbdoctor-rules.yaml alerts on\n%s", name, body)
		}
	}
	// Every layer read with the DaemonSet's capabilities and the image's
	// tools: no probe error counted.
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "lbdoctor_probe_errors_total{") && !strings.HasSuffix(line, " 0") {
			t.Errorf("GET /metrics: %s, want no probe error", line)
		}
	}

	grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("the image's lbdoctor after SIGTERM: %v, want exit 0\n%s", err, stderr.String())
		}
	case <-time.After(grace):
		t.Errorf("the image's lbdoctor still runs %s after SIGTERM (terminationGracePeriodSeconds), want it gone", grace)
	}
}

// TestPrometheusRules checks the alerting rules and runs their unit tests,
// which fire each alert on synthetic series and keep it quiet on healthy ones.
func TestPrometheusRules(t *testing.T) {
	promtool := need(t, "promtool", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "lbdoctor-rules.yaml"},
		{"test", "rules", "lbdoctor-rules_test.yaml"},
	} {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			run(t, "prometheus", promtool, args...)
		})
	}
}
