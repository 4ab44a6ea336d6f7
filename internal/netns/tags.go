package netns

// Tags names namespaces by inode for output lines: its /run/netns name,
// "current" for lbdoctor's own, "host" for pid 1's; looked up once each.
// A Tags is for one goroutine at a time.
type Tags map[uint32]string

// NewTags knows lbdoctor's own namespace and the host's.
func NewTags() Tags {
	t := Tags{}
	if self, err := Resolve(""); err == nil {
		t[uint32(self.Inode)] = "current"
	}
	if host, err := Resolve("pid:1"); err == nil {
		t[uint32(host.Inode)] = "host"
	}
	return t
}

// Of is the tag of the namespace with inode ("" when it has no name).
func (t Tags) Of(inode uint32) string {
	if n, ok := t[inode]; ok {
		return n
	}
	t[inode] = NameOf(uint64(inode))
	return t[inode]
}
