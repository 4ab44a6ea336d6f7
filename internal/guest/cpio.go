package guest

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// cpioWriter writes the "newc" cpio format the kernel unpacks as an initramfs.
// The kernel accepts several archives concatenated into one initrd, which is
// how a run adds its files on top of the cached base image without rebuilding it.
type cpioWriter struct {
	w     io.Writer
	n     int64
	inode uint32
	err   error
}

func newCPIOWriter(w io.Writer) *cpioWriter { return &cpioWriter{w: w, inode: 1} }

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if rem := c.n % 4; rem != 0 {
		c.write(make([]byte, 4-rem))
	}
}

func (c *cpioWriter) header(name string, mode uint32, size int) {
	c.inode++
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.inode, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write(append([]byte(name), 0))
	c.pad()
}

// Dir adds a directory entry.
func (c *cpioWriter) Dir(name string, perm fs.FileMode) {
	c.header(name, 0o040000|uint32(perm.Perm()), 0)
}

// File adds a regular file with the given contents.
func (c *cpioWriter) File(name string, perm fs.FileMode, data []byte) {
	c.header(name, 0o100000|uint32(perm.Perm()), len(data))
	c.write(data)
	c.pad()
}

// Symlink adds a symbolic link.
func (c *cpioWriter) Symlink(name, target string) {
	c.header(name, 0o120777, len(target))
	c.write([]byte(target))
	c.pad()
}

// Close writes the trailer.
func (c *cpioWriter) Close() error {
	c.header("TRAILER!!!", 0, 0)
	return c.err
}

// AddTree adds every entry below root, named relative to root with prefix.
func (c *cpioWriter) AddTree(root, prefix string) error {
	var paths []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk %s: %w", root, err)
	}
	sort.Strings(paths) // parents before children, and a reproducible archive
	for _, p := range paths {
		rel, _ := filepath.Rel(root, p)
		name := strings.TrimPrefix(filepath.ToSlash(filepath.Join(prefix, rel)), "/")
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			c.Symlink(name, target)
		case fi.IsDir():
			c.Dir(name, fi.Mode())
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			c.File(name, fi.Mode(), data)
		}
	}
	return c.err
}
