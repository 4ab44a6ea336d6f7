package drops

// The BPF object is built from bpf/ by a pinned bpf2go (go.mod tool) and a
// pinned clang from Debian (clang-19); `make generate` runs this, and CI
// checks that the committed output is fresh.
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -D__TARGET_ARCH_x86 -I/usr/include/x86_64-linux-gnu" -target bpfel -type event -type agg_key -type place_key -type counter drops ../../bpf/drops.bpf.c -- -I../../bpf
