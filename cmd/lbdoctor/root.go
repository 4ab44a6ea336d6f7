package main

import (
	"errors"
	"fmt"
	"io"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/lbdoctor/lbdoctor/internal/input"
	"github.com/lbdoctor/lbdoctor/internal/report"
)

// version is set at build time: -ldflags "-X main.version=v0.1.0".
var version = ""

type globalFlags struct {
	netns  string
	output string
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "lbdoctor",
		Short: "Set up and diagnose Linux IPVS NAT load balancers",
		Long: `lbdoctor finds where packets die on a Linux IPVS load balancer and builds
the NAT path correctly. check and inspect read IPVS, sysctls, packet-filter
rules, conntrack and counters in any network namespace; drops traces where
the kernel drops packets and which VIP flow they belonged to; capture shows
each leg of a VIP's flows on the LB, joined across the NAT; tui shows all of
it live, with the path's legs and a mark where packets die; serve runs it
always on and serves it to Prometheus; setup, teardown,
check --fix and lab change the host, and print their plan first.

Exit codes: 0 ok, 1 a check failed (lab status, lab probe: the lab is not
up or not answering), 2 bad usage or input, 3 cannot inspect
(a missing privilege or kernel feature, named), 4 an operation failed for
another reason (named), 130 interrupted before anything was measured (or a
change was undone).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if err := refuseEmptyValues(cmd); err != nil {
				return err
			}
			if err := refuseIgnoredGlobals(cmd); err != nil {
				return err
			}
			g.output = strings.ToLower(g.output) // names are read in any case
			switch {
			case g.output == "junit" && cmd.Name() != "check":
				return usageErrorf("--output junit is for check only")
			case g.output != "text" && g.output != "json" && g.output != "junit":
				return usageErrorf("--output %q: want text or json (or junit, for check)", g.output)
			}
			return nil
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.netns, "netns", "", "network namespace: a /run/netns `NAME`, a PATH, or pid:N (default: the current one)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "text", "output `FORMAT`: text or json (check also: junit)")
	root.SetFlagErrorFunc(flagError)
	root.AddCommand(newCheckCmd(g), newInspectCmd(g), newDropsCmd(g), newCaptureCmd(g), newTUICmd(g), newSetupCmd(g), newTeardownCmd(g), newLabCmd(), newServeCmd(), newVersionCmd(g))
	root.SetHelpCommand(newHelpCmd())
	root.InitDefaultCompletionCmd()
	strictArgs(root)
	return root
}

// flagError words a flag that did not parse in the user's terms: pflag says
// `invalid argument "5" for "--drops" flag: time: missing unit in duration
// "5"`, which shows Go's parsers and echoes the value whole.
func flagError(_ *cobra.Command, err error) error {
	var vre *pflag.ValueRequiredError
	if errors.As(err, &vre) {
		return usageErrorf("%s needs a value", flagName(vre.GetFlag()))
	}
	var ive *pflag.InvalidValueError
	if !errors.As(err, &ive) {
		return usageErrorf("%v", err)
	}
	f := ive.GetFlag()
	var twice *givenTwiceError
	if errors.As(err, &twice) {
		return usageErrorf("%s given twice (%s, then %s): give it once", flagName(f), input.Quote(twice.first), input.Quote(ive.GetValue()))
	}
	var ne *strconv.NumError
	tooLarge := errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange)
	want := ""
	switch t := strings.TrimSuffix(f.Value.Type(), "Slice"); t {
	case "int", "int8", "int16", "int32", "int64", "count":
		want = "want a whole number"
		if tooLarge {
			want += ", at most " + strconv.FormatInt(1<<(intBits(t)-1)-1, 10)
		}
	case "uint", "uint8", "uint16", "uint32", "uint64":
		want = "want a whole number 0 or more"
		if tooLarge {
			want = "want a whole number 0-" + strconv.FormatUint(1<<intBits(t)-1, 10)
		}
	case "duration":
		cause := errors.Unwrap(err).Error()
		switch {
		case strings.Contains(cause, "unknown unit"):
			want = "want a duration such as 5s, 500ms or 2m (units: ns, us, ms, s, m, h)"
		case durationRE.MatchString(ive.GetValue()):
			want = "want a duration of at most 2562047h"
		default:
			want = "want a duration with a unit, e.g. 5s, 500ms or 2m"
		}
	case "bool":
		want = "want true or false"
	case "float32", "float64":
		want = "want a number"
	default:
		want = errors.Unwrap(err).Error()
	}
	return usageErrorf("%s %s: %s", flagName(f), input.Quote(ive.GetValue()), want)
}

// portsValue is a repeatable port flag (--port 80 --port 443, or 80,443):
// each value is checked as it is given, so every bad one — "0", "-1", " 80",
// "70000", "http" — gets the same "want a port 1-65535" through flagError.
// Empty, its String is "", so help shows no Go-style "(default [])".
type portsValue []uint16

func (p *portsValue) Set(s string) error {
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return errors.New("want a port 1-65535")
		}
		*p = append(*p, uint16(n))
	}
	return nil
}

func (p *portsValue) String() string {
	var ss []string
	for _, n := range *p {
		ss = append(ss, strconv.Itoa(int(n)))
	}
	return strings.Join(ss, ",")
}

func (p *portsValue) Type() string { return "ports" }

// durationRE is a well-formed Go duration ("99999999999h"): one that did not
// parse was out of range.
var durationRE = regexp.MustCompile(`^[+-]?([0-9]*\.?[0-9]+(ns|us|µs|ms|s|m|h))+$`)

// flagName is how a flag error names the flag: -n/--count, --top.
func flagName(f *pflag.Flag) string {
	if f.Shorthand != "" {
		return "-" + f.Shorthand + "/--" + f.Name
	}
	return "--" + f.Name
}

// intBits is the size of a pflag integer type ("int16": 16; "int": 64).
func intBits(t string) int {
	for _, n := range []int{8, 16, 32} {
		if strings.HasSuffix(t, strconv.Itoa(n)) {
			return n
		}
	}
	return 64
}

// strictArgs makes every unknown subcommand and stray argument a usage error,
// on every level: a command with subcommands (lbdoctor, lab, completion)
// called alone, or with one it does not have, is a usage error (exit 2, one
// line naming its subcommands), and a leaf takes no arguments. Cobra's own
// defaults print help and exit 0, or return untyped errors.
func strictArgs(cmd *cobra.Command) {
	if strings.HasPrefix(cmd.Name(), "__") { // cobra's hidden shell-completion requests
		return
	}
	switch {
	case cmd.Name() == "help":
	case cmd.HasSubCommands() && !cmd.Runnable() || cmd == cmd.Root():
		cmd.Args = func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf("unknown command %q for %s (see %s --help)", args[0], c.CommandPath(), c.CommandPath())
			}
			return nil
		}
		// Alone, a parent is as much a usage error as a wrong
		// subcommand: one line naming the ones it has, exit 2.
		cmd.RunE = func(c *cobra.Command, _ []string) error {
			var names []string
			for _, sub := range c.Commands() {
				if sub.IsAvailableCommand() {
					names = append(names, sub.Name())
				}
			}
			return usageErrorf("%s needs a command: %s (see %s --help)", c.CommandPath(), strings.Join(names, ", "), c.CommandPath())
		}
	default:
		cmd.Args = noArgs
	}
	for _, fs := range []*pflag.FlagSet{cmd.LocalNonPersistentFlags(), cmd.PersistentFlags()} {
		fs.VisitAll(onlyOnce)
	}
	for _, c := range cmd.Commands() {
		strictArgs(c)
	}
}

// onlyOnce makes a flag that takes one value refuse a second (exit 2):
// pflag keeps the last, so `check --vip A --vip B` judged B alone, saying
// nothing. Repeatable flags (slices, arrays, counts, --port) take many.
func onlyOnce(f *pflag.Flag) {
	if _, done := f.Value.(*onceValue); done {
		return
	}
	t := f.Value.Type()
	if strings.HasSuffix(t, "Slice") || strings.HasSuffix(t, "Array") || t == "count" || t == "ports" {
		return
	}
	f.Value = &onceValue{Value: f.Value}
}

// onceValue is a flag's value that may be set once.
type onceValue struct {
	pflag.Value
	first *string // the value given first
}

func (o *onceValue) Set(s string) error {
	if o.first != nil {
		return &givenTwiceError{first: *o.first}
	}
	o.first = &s
	return o.Value.Set(s)
}

// givenTwiceError is a second value for a flag that takes one (flagError
// words it).
type givenTwiceError struct{ first string }

func (e *givenTwiceError) Error() string { return "given twice (first " + input.Quote(e.first) + ")" }

// newHelpCmd is `lbdoctor help [COMMAND…]`: the help of that command, and a
// usage error for one that does not exist.
func newHelpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "help [COMMAND]",
		Short: "Help about any command",
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			c, rest, err := root.Find(args)
			if err != nil || len(rest) > 0 || c == nil {
				return usageErrorf("help %s: no such command (see lbdoctor --help)", strings.Join(args, " "))
			}
			c.InitDefaultHelpFlag() // list -h/--help as `c --help` does
			return c.Help()
		},
	}
}

// refuseEmptyValues makes an explicitly empty value a usage error for every
// flag: `--host ""` or `--proto ""` would otherwise mean "no filter" or "any"
// without the user having asked for that.
func refuseEmptyValues(cmd *cobra.Command) error {
	var err error
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if err != nil || f.Annotations[validatesEmpty] != nil {
			return
		}
		empty := f.Value.String() == ""
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			vals := sv.GetSlice()
			empty = len(vals) == 0 || slices.Contains(vals, "")
		}
		if empty {
			err = usageErrorf("--%s: empty value (leave the flag out for its default)", f.Name)
		}
	})
	return err
}

// validatesEmpty marks a flag whose verb refuses an empty value itself, with
// a message of its own (lab --name: "bad lab name").
const validatesEmpty = "lbdoctor_validates_empty"

// globalUsers lists the commands that use each global flag; any other command
// refuses it rather than silently ignoring it.
var globalUsers = map[string][]string{
	"netns":  {"check", "inspect", "drops", "capture", "tui", "setup", "teardown"},
	"output": {"check", "inspect", "drops", "capture", "version"},
}

func refuseIgnoredGlobals(cmd *cobra.Command) error {
	for flag, users := range globalUsers {
		f := cmd.InheritedFlags().Lookup(flag)
		if f == nil || !f.Changed {
			continue
		}
		if !slices.Contains(users, cmd.Name()) || cmd.Parent() != cmd.Root() {
			if flag == "output" {
				return usageErrorf("--output: %s prints text only", cmd.CommandPath())
			}
			return usageErrorf("--%s: %s does not take it", flag, cmd.CommandPath())
		}
	}
	return nil
}

func newVersionCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the lbdoctor version",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if g.output == "json" {
				return report.JSONDocument(cmd.OutOrStdout(), struct {
					Version string `json:"version"`
				}{versionString()})
			}
			fmt.Fprintln(cmd.OutOrStdout(), "lbdoctor "+versionString())
			return nil
		},
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v = strings.TrimSuffix(v, "(devel)") + "devel-" + s.Value[:12]
			}
		}
		if v != "" {
			return v
		}
	}
	return "devel"
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("%s takes no arguments, got %q", cmd.CommandPath(), args[0])
	}
	return nil
}
