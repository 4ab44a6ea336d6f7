package guest

import (
	"bytes"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// readNewc is a minimal reader of what cpioWriter writes, to check the
// format the kernel parses: name → (mode, data).
func readNewc(t *testing.T, b []byte) map[string]string {
	t.Helper()
	out := map[string]string{}
	off := 0
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at offset %d", off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(v)
		}
		mode, size, namesize := field(1), field(6), field(11)
		name := string(b[off+110 : off+110+namesize-1])
		off += 110 + namesize
		off = (off + 3) &^ 3
		if name == "TRAILER!!!" {
			return out
		}
		out[name] = strconv.FormatInt(int64(mode), 8) + ":" + string(b[off:off+size])
		off = (off + size + 3) &^ 3
	}
}

func TestCPIOWriter(t *testing.T) {
	var buf bytes.Buffer
	w := newCPIOWriter(&buf)
	w.Dir("etc", 0o755)
	w.File("etc/odd", 0o644, []byte("12345"))
	w.Symlink("sbin/modprobe", "/bin/busybox")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not 4-aligned", buf.Len())
	}
	got := readNewc(t, buf.Bytes())
	want := map[string]string{"etc": "40755:", "etc/odd": "100644:12345", "sbin/modprobe": "120777:/bin/busybox"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("archive entry %s = %q, want %q", k, got[k], v)
		}
	}
}

// The run script must hand every argument to the program unchanged:
// go test passes regexps with quotes, spaces and $.
func TestRunScriptQuoting(t *testing.T) {
	args := []string{"-test.run=^TestGuest(A|B)$", "it's", "a b", `"q"`, "$HOME", ""}
	s := runScript(Run{Program: "/x/printf", Args: args, WorkDir: "/", Env: map[string]string{"K": "v w"}})
	s = strings.Replace(s, "exec '/lbdoctor-run/bin/printf'", `printf '%s\n'`, 1)
	out, err := exec.Command("/bin/sh", "-c", s).Output()
	if err != nil {
		t.Fatalf("run script: %v\n%s", err, s)
	}
	if got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n"); strings.Join(got, "|") != strings.Join(args, "|") {
		t.Errorf("runScript(%q) passed %q", args, got)
	}
}
