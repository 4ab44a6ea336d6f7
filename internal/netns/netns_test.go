package netns_test

import (
	"errors"
	"fmt"
	"os"
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
	for _, bad := range []string{"lbd-does-not-exist", "/nonexistent/ns", "pid:0", "pid:abc", "/etc/hostname"} {
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
