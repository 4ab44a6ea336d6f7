package guest

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Run describes one program run inside a fresh guest.
type Run struct {
	Program string            // host path of a static binary, run as the guest's job
	Args    []string          // its arguments
	Env     map[string]string // its environment (PATH and LBDOCTOR_GUEST are set for it)
	Files   map[string]string // guest path → host path of extra files (e.g. bin/lbdoctor)
	Dirs    map[string]string // guest path → host folder copied whole (e.g. testdata)
	WorkDir string            // guest working folder; default /lbdoctor-run/wd
	Timeout time.Duration     // hard limit for the whole boot-run-poweroff; default 10 min
	Memory  string            // qemu -m; default 512M
	Stdout  io.Writer         // the program's output (stdout and stderr together)
	LogDir  string            // where a failing run's serial log is kept; default CacheDir()/logs
}

// Result is what came back from the guest.
type Result struct {
	ExitCode int           // the program's exit status
	Boot     time.Duration // qemu start to the program's first output or end
	Total    time.Duration
	Log      string // serial console log, kept only when the run failed
}

var exitMarker = regexp.MustCompile(`LBDOCTOR-GUEST-EXIT=(\d+)`)

// ErrStaticBinary reports a program the bare guest cannot load.
var ErrStaticBinary = errors.New("program is dynamically linked; build it with CGO_ENABLED=0")

// Execute boots the image, runs r.Program in it and returns its exit status.
// An error means the guest itself failed (no boot, timeout); the serial log
// is then kept and named in the error.
func (img *Image) Execute(ctx context.Context, r Run) (Result, error) {
	var res Result
	if err := requireStatic(r.Program); err != nil {
		return res, err
	}
	if r.Timeout == 0 {
		r.Timeout = 10 * time.Minute
	}
	if r.Memory == "" {
		r.Memory = "512M"
	}
	if r.WorkDir == "" {
		r.WorkDir = "/lbdoctor-run/wd"
	}
	if r.LogDir == "" {
		r.LogDir = filepath.Join(CacheDir(), "logs")
	}
	if r.Stdout == nil {
		r.Stdout = os.Stdout
	}
	tmp, err := os.MkdirTemp("", "lbdoctor-guest-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(tmp)

	initrd := filepath.Join(tmp, "initrd")
	if err := writeInitrd(img, r, initrd); err != nil {
		return res, fmt.Errorf("assemble guest initrd: %w", err)
	}
	console := filepath.Join(tmp, "console.log")
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-accel", "tcg", "-cpu", "max", "-m", r.Memory, "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", img.Kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet rdinit=/init",
		"-serial", "file:"+console, "-serial", "stdio")
	first := &firstWrite{w: &crlfWriter{w: r.Stdout}}
	cmd.Stdout = first
	var qerr bytes.Buffer
	cmd.Stderr = &qerr
	start := time.Now()
	runErr := cmd.Run()
	res.Total = time.Since(start)
	res.Boot = res.Total
	if !first.at.IsZero() {
		res.Boot = first.at.Sub(start)
	}

	keep := func(reason string) error {
		res.Log = keepLog(console, r.LogDir)
		return fmt.Errorf("%s; serial log: %s\n--- last console lines ---\n%s\n%s", reason, res.Log, lastLines(console, 25), strings.TrimSpace(qerr.String()))
	}
	if ctx.Err() == context.DeadlineExceeded {
		return res, keep(fmt.Sprintf("guest timed out after %s", r.Timeout))
	}
	if runErr != nil {
		return res, keep(fmt.Sprintf("qemu failed: %v", runErr))
	}
	data, _ := os.ReadFile(console)
	m := exitMarker.FindSubmatch(data)
	if m == nil {
		return res, keep("guest ended without reporting an exit status (did it boot?)")
	}
	res.ExitCode, _ = strconv.Atoi(string(m[1]))
	if res.ExitCode != 0 {
		res.Log = keepLog(console, r.LogDir)
	}
	return res, nil
}

func requireStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("open guest program %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s: %w", path, ErrStaticBinary)
		}
	}
	return nil
}

// writeInitrd concatenates the cached base archive with a small uncompressed
// archive holding this run's program, files and start script.
func writeInitrd(img *Image, r Run, dst string) error {
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	base, err := os.Open(img.Initramfs)
	if err != nil {
		return err
	}
	n, err := io.Copy(out, base)
	base.Close()
	if err != nil {
		return err
	}
	// The kernel looks for the next archive's magic only at 4-byte offsets.
	if rem := n % 4; rem != 0 {
		if _, err := out.Write(make([]byte, 4-rem)); err != nil {
			return err
		}
	}
	cw := newCPIOWriter(out)
	for _, d := range []string{"lbdoctor-run", "lbdoctor-run/bin", strings.TrimPrefix(r.WorkDir, "/")} {
		cw.Dir(d, 0o755)
	}
	prog, err := os.ReadFile(r.Program)
	if err != nil {
		return err
	}
	cw.File("lbdoctor-run/bin/"+filepath.Base(r.Program), 0o755, prog)
	guestPaths := make([]string, 0, len(r.Files))
	for g := range r.Files {
		guestPaths = append(guestPaths, g)
	}
	sort.Strings(guestPaths)
	for _, g := range guestPaths {
		data, err := os.ReadFile(r.Files[g])
		if err != nil {
			return fmt.Errorf("guest file %s: %w", g, err)
		}
		mkParents(cw, g)
		cw.File(strings.TrimPrefix(g, "/"), 0o755, data)
	}
	for g, h := range r.Dirs {
		mkParents(cw, g)
		cw.Dir(strings.TrimPrefix(g, "/"), 0o755)
		if err := cw.AddTree(h, g); err != nil {
			return err
		}
	}
	cw.File("lbdoctor-run/run.sh", 0o755, []byte(runScript(r)))
	return cw.Close()
}

func mkParents(cw *cpioWriter, guestPath string) {
	dir := filepath.Dir(strings.TrimPrefix(guestPath, "/"))
	var parts []string
	for _, p := range strings.Split(dir, "/") {
		if p == "" || p == "." {
			continue
		}
		parts = append(parts, p)
		cw.Dir(strings.Join(parts, "/"), 0o755)
	}
}

func runScript(r Run) string {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	keys := make([]string, 0, len(r.Env))
	for k := range r.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(r.Env[k]))
	}
	b.WriteString("export LBDOCTOR_GUEST=1\n")
	fmt.Fprintf(&b, "cd %s || exit 126\n", shellQuote(r.WorkDir))
	b.WriteString("exec " + shellQuote("/lbdoctor-run/bin/"+filepath.Base(r.Program)))
	for _, a := range r.Args {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString("\n")
	return b.String()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func keepLog(console, dir string) string {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return console
	}
	dst := filepath.Join(dir, time.Now().Format("20060102-150405.000")+"-console.log")
	if err := copyFile(console, dst); err != nil {
		return console
	}
	return dst
}

// crlfWriter turns the serial line's CR LF back into LF.
type crlfWriter struct{ w io.Writer }

func (c *crlfWriter) Write(p []byte) (int, error) {
	if _, err := c.w.Write(bytes.ReplaceAll(p, []byte("\r\n"), []byte("\n"))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// firstWrite notes when the guest program first said something: the boot time.
type firstWrite struct {
	w  io.Writer
	at time.Time
}

func (f *firstWrite) Write(p []byte) (int, error) {
	if f.at.IsZero() {
		f.at = time.Now()
	}
	return f.w.Write(p)
}
