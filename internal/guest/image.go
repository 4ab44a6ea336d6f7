// Package guest boots Debian's IPVS-capable cloud kernel under qemu (TCG) and
// runs a program inside it, so that code needing real IPVS is tested on a real
// kernel even where the host kernel has none.
//
// The image is built from Debian packages (apt-get download + dpkg -x, nothing
// is installed into /) and cached outside the work tree; each run appends its
// own files as a second cpio archive to the cached initramfs.
package guest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

//go:embed init.sh
var initScript []byte

// kernelMeta is the Debian package whose dependency names the current cloud kernel.
const kernelMeta = "linux-image-cloud-amd64"

// recipeVersion changes whenever the way an image is put together changes, so
// that caches built by older code are not reused.
const recipeVersion = "3"

// Modules loaded at boot, with their dependencies resolved from the kernel package.
var guestModules = []string{
	"ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "ip_vs_wlc", "ip_vs_lc",
	"xt_ipvs", "ip_tables", "iptable_nat", "iptable_filter", "iptable_mangle", "iptable_raw",
	"xt_MASQUERADE", "xt_conntrack", "xt_addrtype", "xt_comment", "xt_mark", "xt_nat", "xt_tcpudp",
	"nf_tables", "nft_compat", "nft_chain_nat", "nft_masq", "nft_ct", "nft_nat", "nft_reject_inet",
	"nf_conntrack_netlink", "veth", "bridge",
	"dummy", // kube-proxy's kube-ipvs0 holds its VIPs on a dummy link
	// kube-proxy's ipsets and the iptables match that reads them.
	"ip_set", "ip_set_hash_ip", "ip_set_hash_ipport", "ip_set_hash_ipportip", "ip_set_hash_ipportnet",
	"ip_set_hash_net", "ip_set_bitmap_port", "xt_set",
}

// Userland packages unpacked into the guest: busybox for the shell, and the
// tools an operator would use to cross-check lbdoctor, with their libraries.
var guestPackages = []string{
	"busybox-static", "netbase", // /etc/protocols and /etc/services, which nft and iptables print names from
	"libc6",
	"iptables", "libip4tc2", "libip6tc2", "libxtables12", "libmnl0", "libnetfilter-conntrack3",
	"libnfnetlink0", "libnftnl11",
	"ipvsadm", "libnl-3-200", "libnl-genl-3-200", "libpopt0",
	"nftables", "libnftables1", "libedit2", "libgmp10", "libjansson4", "libbsd0", "libmd0", "libtinfo6",
	"conntrack", "libnetfilter-cttimeout1", "libnetfilter-cthelper0", "libnetfilter-queue1",
	"ipset", "libipset13", // kube-proxy's sets, built in the guest as kube-proxy builds them
}

// Links Debian's maintainer scripts would create (update-alternatives).
var guestLinks = map[string]string{
	"usr/sbin/iptables":             "xtables-nft-multi",
	"usr/sbin/iptables-save":        "xtables-nft-multi",
	"usr/sbin/iptables-restore":     "xtables-nft-multi",
	"usr/sbin/ip6tables":            "xtables-nft-multi",
	"usr/sbin/iptables-nft":         "xtables-nft-multi",
	"usr/sbin/iptables-nft-save":    "xtables-nft-multi",
	"usr/sbin/iptables-legacy":      "xtables-legacy-multi",
	"usr/sbin/iptables-legacy-save": "xtables-legacy-multi",
	"sbin/modprobe":                 "/bin/busybox",
}

// Image is a bootable guest: a kernel and a base initramfs.
type Image struct {
	Dir       string // cache folder of this image
	Kernel    string // path of vmlinuz
	Initramfs string // path of the base initramfs (gzip cpio)
	KernelVer string // e.g. 6.1.0-56-cloud-amd64
}

// CacheDir is where images and downloaded packages are kept: $LBDOCTOR_GUEST_CACHE,
// else the user cache folder.
func CacheDir() string {
	if d := os.Getenv("LBDOCTOR_GUEST_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "lbdoctor", "guest")
	}
	return filepath.Join(os.TempDir(), "lbdoctor-guest")
}

// ErrUnavailable reports that this machine cannot run the guest at all (no
// qemu, no apt); callers outside CI skip on it.
var ErrUnavailable = errors.New("guest unavailable")

// Check tells whether the tools the guest needs are on this machine.
func Check() error {
	for _, tool := range []string{"qemu-system-x86_64", "apt-get", "apt-cache", "dpkg", "depmod", "modprobe"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w: %s not found (Debian packages: qemu-system-x86 kmod)", ErrUnavailable, tool)
		}
	}
	return nil
}

// Prepare returns the cached image, building it first if needed. Concurrent
// callers (go test runs packages in parallel) wait on a lock instead of
// building twice.
func Prepare(ctx context.Context, logw io.Writer) (*Image, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	cache := CacheDir()
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, fmt.Errorf("create guest cache %s: %w", cache, err)
	}
	lock, err := os.OpenFile(filepath.Join(cache, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open guest cache lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock guest cache: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	kpkg, err := resolveKernelPackage(ctx)
	if err != nil {
		return nil, err
	}
	kver := strings.TrimPrefix(kpkg, "linux-image-")
	sum := sha256.New()
	fmt.Fprintln(sum, recipeVersion, kpkg, guestModules, guestPackages, guestLinks)
	sum.Write(initScript)
	img := &Image{Dir: filepath.Join(cache, "image-"+hex.EncodeToString(sum.Sum(nil))[:12]), KernelVer: kver}
	img.Kernel = filepath.Join(img.Dir, "vmlinuz")
	img.Initramfs = filepath.Join(img.Dir, "base.cpio.gz")
	if _, err := os.Stat(filepath.Join(img.Dir, "ready")); err == nil {
		return img, nil
	}
	fmt.Fprintf(logw, "guest: building image for %s in %s\n", kver, img.Dir)
	if err := build(ctx, img, cache, kpkg); err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	return img, nil
}

func resolveKernelPackage(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", kernelMeta).Output()
	if err != nil {
		return "", fmt.Errorf("resolve %s (run apt-get update first): %w", kernelMeta, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("resolve %s: no linux-image dependency in apt-cache output (run apt-get update first)", kernelMeta)
}

func build(ctx context.Context, img *Image, cache, kpkg string) error {
	debs := filepath.Join(cache, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return err
	}
	pkgs := append([]string{kpkg}, guestPackages...)
	var missing []string
	for _, p := range pkgs {
		if m, _ := filepath.Glob(filepath.Join(debs, p+"_*.deb")); len(m) == 0 {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		cmd := exec.CommandContext(ctx, "apt-get", append([]string{"download", "-q"}, missing...)...)
		cmd.Dir = debs
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get download %s: %w\n%s", strings.Join(missing, " "), err, out)
		}
	}
	work, err := os.MkdirTemp(cache, "build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	kroot, root := filepath.Join(work, "kernel"), filepath.Join(work, "root")
	unpack := func(pkg, dst string) error {
		m, _ := filepath.Glob(filepath.Join(debs, pkg+"_*.deb"))
		if len(m) == 0 {
			return fmt.Errorf("package %s was not downloaded", pkg)
		}
		if out, err := exec.CommandContext(ctx, "dpkg", "-x", m[len(m)-1], dst).CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg -x %s: %w\n%s", m[len(m)-1], err, out)
		}
		return nil
	}
	if err := unpack(kpkg, kroot); err != nil {
		return err
	}
	for _, p := range guestPackages {
		if err := unpack(p, root); err != nil {
			return err
		}
	}
	kver := img.KernelVer
	if out, err := exec.CommandContext(ctx, "depmod", "-b", kroot, kver).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod kernel package: %w\n%s", err, out)
	}
	for _, m := range guestModules {
		out, err := exec.CommandContext(ctx, "modprobe", "-d", kroot, "-S", kver, "--show-depends", m).CombinedOutput()
		if err != nil {
			return fmt.Errorf("resolve module %s: %w\n%s", m, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "insmod" {
				continue // "builtin X" needs nothing
			}
			rel, err := filepath.Rel(kroot, f[1])
			if err != nil {
				return err
			}
			if err := copyFile(f[1], filepath.Join(root, rel)); err != nil {
				return err
			}
		}
	}
	for _, f := range []string{"modules.builtin", "modules.builtin.modinfo", "modules.order"} {
		if err := copyFile(filepath.Join(kroot, "lib/modules", kver, f), filepath.Join(root, "lib/modules", kver, f)); err != nil {
			return err
		}
	}
	if out, err := exec.CommandContext(ctx, "depmod", "-b", root, kver).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod guest modules: %w\n%s", err, out)
	}
	for _, junk := range []string{"usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info", "usr/share/lintian", "usr/lib/x86_64-linux-gnu/gconv"} {
		os.RemoveAll(filepath.Join(root, junk))
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "sbin", "etc/lbdoctor", "usr/local/bin", "lbdoctor-run"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	for link, target := range guestLinks {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil && !os.IsExist(err) {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/lbdoctor/modules"), []byte(strings.Join(guestModules, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "init"), initScript, 0o755); err != nil {
		return err
	}
	if err := checkLibraries(root); err != nil {
		return err
	}

	if err := os.MkdirAll(img.Dir, 0o755); err != nil {
		return err
	}
	if err := copyFile(filepath.Join(kroot, "boot", "vmlinuz-"+kver), img.Kernel); err != nil {
		return err
	}
	f, err := os.Create(img.Initramfs)
	if err != nil {
		return err
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	cw := newCPIOWriter(zw)
	if err := cw.AddTree(root, ""); err != nil {
		f.Close()
		return err
	}
	if err := errors.Join(cw.Close(), zw.Close(), f.Close()); err != nil {
		return fmt.Errorf("write %s: %w", img.Initramfs, err)
	}
	return os.WriteFile(filepath.Join(img.Dir, "ready"), []byte(kpkg+"\n"), 0o644)
}

// checkLibraries fails when a program in the guest needs a shared library the
// image lacks: a missing library otherwise shows up as an obscure failure in a test.
func checkLibraries(root string) error {
	have := map[string]bool{}
	for _, dir := range []string{"lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64"} {
		ents, _ := os.ReadDir(filepath.Join(root, dir))
		for _, e := range ents {
			have[e.Name()] = true
		}
	}
	var problems []string
	for _, dir := range []string{"usr/sbin", "sbin", "usr/bin", "bin"} {
		ents, _ := os.ReadDir(filepath.Join(root, dir))
		for _, e := range ents {
			if !e.Type().IsRegular() {
				continue
			}
			f, err := elf.Open(filepath.Join(root, dir, e.Name()))
			if err != nil {
				continue // a script
			}
			libs, _ := f.ImportedLibraries()
			f.Close()
			for _, l := range libs {
				if !have[l] {
					problems = append(problems, fmt.Sprintf("%s/%s needs %s", dir, e.Name(), l))
				}
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("guest image lacks libraries (add their packages to guestPackages): %s", strings.Join(problems, "; "))
	}
	return nil
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, data, fi.Mode().Perm())
}

// lastLines returns the last n lines of a file, for error messages.
func lastLines(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, strings.TrimRight(sc.Text(), "\r"))
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
