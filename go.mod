module github.com/lbdoctor/lbdoctor

go 1.25.0

require (
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/moby/ipvs v1.1.0 // indirect
	github.com/sirupsen/logrus v1.9.0 // indirect
	github.com/spf13/cobra v1.10.2 // indirect
	github.com/spf13/pflag v1.0.9 // indirect
	github.com/vishvananda/netlink v1.3.1 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	golang.org/x/sys v0.10.0 // indirect
)
