package netns_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

func TestResolveSpecs(t *testing.T) {
	ns := testkit.Netns(t, "res")
	self, err := netns.Resolve("")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		spec      string
		wantInode uint64
		wantName  string
	}{
		{ns.Name, ns.Inode, ns.Name},
		{ns.Path, ns.Inode, ns.Name},
		{fmt.Sprintf("pid:%d", os.Getpid()), self.Inode, ""},
	}
	for _, tt := range tests {
		got, err := netns.Resolve(tt.spec)
		if err != nil || got.Inode != tt.wantInode || got.Name != tt.wantName {
			t.Errorf("Resolve(%q) = %+v, %v; want inode %d name %q", tt.spec, got, err, tt.wantInode, tt.wantName)
		}
	}
	if ns.Inode == self.Inode {
		t.Errorf("new netns has the caller's inode %d", self.Inode)
	}
	for _, bad := range []string{"lbd-does-not-exist", "/nonexistent/ns", "pid:0", "pid:abc"} {
		if _, err := netns.Resolve(bad); !errors.Is(err, netns.ErrNotFound) {
			t.Errorf("Resolve(%q) error = %v, want ErrNotFound", bad, err)
		}
	}
}

// Do runs inside the target and never leaks it into the caller.
func TestDoEntersAndLeaves(t *testing.T) {
	ns := testkit.Netns(t, "do")
	var inside uint64
	err := ns.Do(func() error {
		cur, err := netns.Resolve("")
		inside = cur.Inode
		return err
	})
	if err != nil || inside != ns.Inode {
		t.Fatalf("inside Do: inode %d (%v), want %d", inside, err, ns.Inode)
	}
	after, _ := netns.Resolve("")
	if after.Inode == ns.Inode {
		t.Fatal("after Do the caller is still in the target netns")
	}
	sentinel := errors.New("boom")
	if err := ns.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do(error) = %v, want the function's error", err)
	}
}

// Whatever form --netns takes, it must name a network namespace: another
// namespace type, a regular file, a directory, a device, a missing pid, an
// overlong value or a name reaching out of /run/netns is refused.
func TestResolveRefusesWhatIsNotANetns(t *testing.T) {
	tests := []struct {
		name, spec string
		wantErr    error
		wantMsg    string
	}{
		{"mnt namespace", "/proc/self/ns/mnt", netns.ErrNotNetns, "is a mnt namespace, not a network namespace"},
		{"uts namespace", "/proc/self/ns/uts", netns.ErrNotNetns, "is a uts namespace, not a network namespace"},
		{"mnt namespace of a pid", fmt.Sprintf("/proc/%d/ns/mnt", os.Getpid()), netns.ErrNotNetns, "is a mnt namespace"},
		{"regular file", "/etc/hostname", netns.ErrNotNetns, "is a regular file, not a network namespace"},
		{"directory", "/tmp", netns.ErrNotNetns, "is a directory, not a network namespace"},
		{"device", "/dev/null", netns.ErrNotNetns, "is a character device, not a network namespace"},
		{"missing pid", "pid:2147483647", netns.ErrNotFound, "/proc/2147483647/ns/net"},
		{"signed pid", "pid:+1", netns.ErrNotFound, "pid:N needs a positive process id"},
		{"dot dot", "..", netns.ErrNotFound, "is not . or .."},
		{"overlong name", strings.Repeat("n", 300), netns.ErrNotFound, "at most 255"},
		{"overlong path", "/" + strings.Repeat("p/", 3000), netns.ErrNotFound, "longer than any path"},
		{"not a directory", "/etc/hostname/x", netns.ErrNotFound, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := netns.Resolve(tt.spec)
			if !errors.Is(err, tt.wantErr) || !strings.Contains(fmt.Sprint(err), tt.wantMsg) || len(fmt.Sprint(err)) > 300 {
				t.Errorf("Resolve(%.40q) = %v, want %v saying %q (short)", tt.spec, err, tt.wantErr, tt.wantMsg)
			}
		})
	}
}

// Create never adopts or removes a namespace it did not make: a taken name
// is an error and the namespace there stays.
func TestCreateLeavesATakenName(t *testing.T) {
	ns := testkit.Netns(t, "taken")
	if _, err := netns.Create(ns.Name); err == nil {
		t.Fatalf("Create(%s) over an existing namespace = nil error", ns.Name)
	}
	if got, err := netns.Resolve(ns.Name); err != nil || got.Inode != ns.Inode {
		t.Errorf("after Create(%s) failed: Resolve = %+v, %v; want inode %d untouched", ns.Name, got, err, ns.Inode)
	}
}

// Delete removes a name only while it holds the namespace it resolved to.
func TestDeleteLeavesAReusedName(t *testing.T) {
	testkit.RequireRoot(t)
	name := testkit.UniqueName("lbd-reuse")
	old, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Delete(); err != nil {
		t.Fatal(err)
	}
	cur, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cur.Delete() })
	if err := old.Delete(); !errors.Is(err, netns.ErrNotOwned) {
		t.Errorf("Delete(old %s) after the name was reused = %v, want ErrNotOwned", name, err)
	}
	if got, err := netns.Resolve(name); err != nil || got.Inode != cur.Inode {
		t.Errorf("after Delete(old): Resolve(%s) = %+v, %v; want inode %d", name, got, err, cur.Inode)
	}
}

// CreateRecorded hands the inode over before the name exists.
func TestCreateRecordedRecordsFirst(t *testing.T) {
	testkit.RequireRoot(t)
	name := testkit.UniqueName("lbd-rec")
	var recorded uint64
	var existed bool
	ns, err := netns.CreateRecorded(name, func(inode uint64) error {
		recorded = inode
		_, err := os.Stat(filepath.Join(netns.RunDir, name))
		existed = err == nil
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete() })
	if recorded != ns.Inode || existed {
		t.Errorf("CreateRecorded(%s): recorded inode %d (name existed: %v), want %d before the name", name, recorded, existed, ns.Inode)
	}
	failed := testkit.UniqueName("lbd-rec")
	if _, err := netns.CreateRecorded(failed, func(uint64) error { return errors.New("disk full") }); err == nil {
		t.Errorf("CreateRecorded with a failing record = nil error")
	}
	if _, err := os.Stat(filepath.Join(netns.RunDir, failed)); !os.IsNotExist(err) {
		t.Errorf("CreateRecorded with a failing record left %s (stat %v)", failed, err)
	}
}

// A Target keeps meaning the namespace it resolved to: once its name holds
// another namespace, Do refuses instead of running in the wrong one.
func TestDoRefusesAReplacedNamespace(t *testing.T) {
	testkit.RequireRoot(t)
	name := testkit.UniqueName("lbd-swap")
	old, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	old.Delete()
	cur, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cur.Delete() })
	ran := false
	if err := old.Do(func() error { ran = true; return nil }); !errors.Is(err, netns.ErrNotOwned) || ran {
		t.Errorf("Do(old %s) after the name was reused = %v (ran %v), want ErrNotOwned and fn not run", name, err, ran)
	}
	if err := cur.Do(func() error { return nil }); err != nil {
		t.Errorf("Do(current %s) = %v", name, err)
	}
}
