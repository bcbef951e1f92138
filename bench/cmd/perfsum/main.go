// Command perfsum sorts the samples of a `perf record -g` profile of Go
// processes into a few cost categories (record crypto, GC, scheduler,
// syscalls, copies, pion, yamux, …) and prints each one's share, in total
// and per process; with -s-per-gib (the measured proxy CPU seconds per
// GiB) it also prints each share in seconds per GiB.
//
// Usage:
//
//	perf script -F pid,tid,period,ip,sym -i perf.data | perfsum [-pids client=PID,server=PID] [-s-per-gib 8.5]
//
// A sample goes to the first category whose rule matches its call chain
// (leaf first), in the order of the rules below.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
)

type rule struct {
	name string
	// leaf: only the innermost frame is tested; otherwise any frame.
	leaf     bool
	prefixes []string
	contains []string
}

var rules = []rule{
	{name: "curve arithmetic (circl, gnark-crypto)", contains: []string{"cloudflare/circl", "consensys/gnark-crypto"}},
	{name: "AES-GCM record encrypt/decrypt", leaf: true, contains: []string{"aes/gcm.", "/aes.", "gcmAes", "ghash"}},
	{name: "pion connctx: a goroutine per Read/Write", contains: []string{"connctx.(*connCtx).ReadContext.func1", "connctx.(*connCtx).WriteContext.func1"}},
	{name: "Go GC and allocation", prefixes: []string{"runtime.gc", "runtime.mallocgc", "runtime.bgsweep", "runtime.sweepone",
		"runtime.bgscavenge", "runtime.(*mheap)", "runtime.wbBuf", "runtime.scanobject", "runtime.markroot", "runtime.(*gcWork)",
		"runtime.(*mcache)", "runtime.(*mcentral)", "runtime.newobject", "runtime.makeslice", "runtime.growslice"}},
	{name: "Go scheduler: park, wake, idle spin", prefixes: []string{"runtime.schedule", "runtime.findRunnable", "runtime.park_m",
		"runtime.sysmon", "runtime.futex", "runtime.notesleep", "runtime.notewakeup", "runtime.stopm", "runtime.startm",
		"runtime.wakep", "runtime.goready", "runtime.ready", "runtime.netpoll", "runtime.gosched", "runtime.usleep",
		"runtime.newproc", "runtime.goexit0", "runtime.mstart", "runtime.exitsyscall", "runtime.entersyscall", "runtime.gopark"}},
	{name: "TCP read/write syscalls (kernel incl.)", prefixes: []string{"syscall.", "internal/poll.", "internal/runtime/syscall",
		"ksys_", "tcp_", "__x64_sys_", "do_syscall_64", "entry_SYSCALL"}},
	{name: "memmove/memclr (copies)", leaf: true, prefixes: []string{"runtime.memmove", "runtime.memclr"}},
	{name: "sync: select, channels, locks", leaf: true, prefixes: []string{"runtime.selectgo", "runtime.chan", "runtime.lock",
		"runtime.unlock", "runtime.sel", "sync.", "internal/sync.", "runtime.sema", "runtime.send", "runtime.recv"}},
	{name: "pion DTLS (other)", contains: []string{"pion/dtls"}},
	{name: "yamux (other)", contains: []string{"hashicorp/yamux", "psk/internal/yamux"}},
	{name: "logging (zerolog)", contains: []string{"rs/zerolog"}},
	{name: "metrics (prometheus)", contains: []string{"prometheus/"}},
	{name: "milagro mpinkex (other)", contains: []string{"milagro/mpinkex"}},
	{name: "milagro psk (other)", contains: []string{"milagro/psk"}},
	{name: "milagro proxy (other)", contains: []string{"milagro/proxy"}},
}

const other = "other"

func (r rule) match(frames []string) bool {
	fs := frames
	if r.leaf && len(fs) > 1 {
		fs = fs[:1]
	}
	for _, f := range fs {
		for _, p := range r.prefixes {
			if strings.HasPrefix(f, p) {
				return true
			}
		}
		for _, c := range r.contains {
			if strings.Contains(f, c) {
				return true
			}
		}
	}
	return false
}

func classify(frames []string) string {
	for _, r := range rules {
		if r.match(frames) {
			return r.name
		}
	}
	return other
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("perfsum: ")
	pidList := flag.String("pids", "", "processes to show as columns: NAME=PID, comma-separated")
	perGiB := flag.Float64("s-per-gib", 0, "measured CPU seconds per GiB of all sampled processes: also print shares in s/GiB")
	flag.Parse()
	var cols, colNames []string
	if *pidList != "" {
		for c := range strings.SplitSeq(*pidList, ",") {
			name, pid, ok := strings.Cut(c, "=")
			if !ok {
				name, pid = "pid "+c, c
			}
			cols, colNames = append(cols, pid), append(colNames, name)
		}
	}
	weight := map[string]map[string]float64{} // category → pid ("" total) → period
	total := map[string]float64{}
	add := func(pid string, period float64, frames []string) {
		if len(frames) == 0 {
			return
		}
		c := classify(frames)
		if weight[c] == nil {
			weight[c] = map[string]float64{}
		}
		weight[c][""] += period
		weight[c][pid] += period
		total[""] += period
		total[pid] += period
	}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var pid string
	var period float64
	var frames []string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "":
			add(pid, period, frames)
			frames = frames[:0]
		case line[0] != '\t':
			// Header: PID/TID PERIOD (the pid may be padded with spaces)
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			pid, _, _ = strings.Cut(f[0], "/")
			period, _ = strconv.ParseFloat(f[1], 64)
		default:
			// Frame: a tab, ADDR SYMBOL
			f := strings.Fields(line)
			if len(f) >= 2 {
				frames = append(frames, f[1])
			}
		}
	}
	add(pid, period, frames)
	if err := sc.Err(); err != nil {
		log.Fatal(err)
	}
	if total[""] == 0 {
		log.Fatal("no samples (use perf script -F pid,tid,period,ip,sym)")
	}
	fmt.Printf("%-42s %7s", "category", "share")
	if *perGiB > 0 {
		fmt.Printf(" %8s", "s/GiB")
	}
	for _, n := range colNames {
		fmt.Printf(" %10s", n)
	}
	fmt.Println()
	names := []string{}
	for _, r := range rules {
		names = append(names, r.name)
	}
	names = append(names, other)
	for _, n := range names {
		w := weight[n]
		if w == nil {
			continue
		}
		fmt.Printf("%-42s %6.1f%%", n, 100*w[""]/total[""])
		if *perGiB > 0 {
			fmt.Printf(" %8.2f", *perGiB*w[""]/total[""])
		}
		for _, p := range cols {
			fmt.Printf(" %9.1f%%", 100*w[p]/total[""])
		}
		fmt.Println()
	}
	fmt.Printf("%-42s %6.1f%%", "total", 100.0)
	if *perGiB > 0 {
		fmt.Printf(" %8.2f", *perGiB)
	}
	for _, p := range cols {
		fmt.Printf(" %9.1f%%", 100*total[p]/total[""])
	}
	fmt.Println()
}
