// Package benchutil holds what the benchmark tools share: reading the CPU
// time of this process and the CPU time and RSS of other processes, the
// per-round CSV row, and the worker loop of the connection-rate
// measurements.
package benchutil

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ClockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux ABI Go runs on).
const ClockTick = 10 * time.Millisecond

// ParsePIDs parses a comma-separated list of process ids ("" is none).
func ParsePIDs(s string) ([]int, error) {
	var pids []int
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := strconv.Atoi(f)
		if err != nil || p <= 0 {
			return nil, fmt.Errorf("bad pid %q", f)
		}
		pids = append(pids, p)
	}
	return pids, nil
}

// SelfCPU is this process's user+system CPU time (getrusage, microsecond
// resolution).
func SelfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// CPU returns utime+stime summed over pids (all threads of each process),
// from /proc/PID/stat, in ClockTick resolution.
func CPU(pids []int) (time.Duration, error) {
	var total time.Duration
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			return 0, err
		}
		// Fields after the command name, which may hold spaces: the
		// first is field 3 (state); utime and stime are fields 14, 15.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			return 0, fmt.Errorf("/proc/%d/stat: no ')'", p)
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			return 0, fmt.Errorf("/proc/%d/stat: short", p)
		}
		for _, s := range f[11:13] {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/stat: %w", p, err)
			}
			total += time.Duration(v) * ClockTick
		}
	}
	return total, nil
}

// RSS returns VmRSS summed over pids, in KiB.
func RSS(pids []int) (int64, error) {
	var total int64
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			return 0, err
		}
		found := false
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("/proc/%d/status: %w", p, err)
				}
				total += n
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("/proc/%d/status: no VmRSS", p)
		}
	}
	return total, nil
}

// Header is the first line of the per-round CSV that loadgen and coldconn
// write one Row of per peer and round. Empty cells were not measured.
const Header = "peer,round,bulk_bytes,bulk_mbps,bulk_cpu_s_per_gib,conns,conn_errors,conn_per_s,conn_cpu_ms,conn_cpu_client_ms,conn_cpu_server_ms,pings,p50_ms,p99_ms"

// Row is one peer's figures in one round. NaN (see Unset) marks a figure
// that was not measured.
type Row struct {
	Peer  string
	Round int
	// Bulk: bytes sent one way to the sink on one connection, MB/s (10^6
	// bytes) and the proxies' CPU seconds per GiB.
	BulkBytes              int64
	BulkMBps, BulkCPUPerGi float64
	// New connections: completed, failed, per second, proxies' CPU ms per
	// completed connection (both sides, then the client and server side).
	Conns, ConnErrors                    int64
	ConnPerS, ConnCPUms, ConnCPUClientms float64
	ConnCPUServerms                      float64
	Pings                                int64
	P50ms, P99ms                         float64
}

// Unset marks a figure that was not measured.
func Unset() Row {
	nan := func() float64 { v, _ := strconv.ParseFloat("NaN", 64); return v }()
	return Row{BulkMBps: nan, BulkCPUPerGi: nan, ConnPerS: nan, ConnCPUms: nan, ConnCPUClientms: nan, ConnCPUServerms: nan, P50ms: nan, P99ms: nan}
}

// CSV formats r as a line of the per-round CSV (no newline).
func (r Row) CSV() string {
	f := func(v float64, prec int) string {
		if v != v {
			return ""
		}
		return strconv.FormatFloat(v, 'f', prec, 64)
	}
	return strings.Join([]string{r.Peer, strconv.Itoa(r.Round), strconv.FormatInt(r.BulkBytes, 10),
		f(r.BulkMBps, 1), f(r.BulkCPUPerGi, 3), strconv.FormatInt(r.Conns, 10), strconv.FormatInt(r.ConnErrors, 10),
		f(r.ConnPerS, 1), f(r.ConnCPUms, 3), f(r.ConnCPUClientms, 3), f(r.ConnCPUServerms, 3),
		strconv.FormatInt(r.Pings, 10), f(r.P50ms, 4), f(r.P99ms, 4)}, ",")
}

// FirstError keeps the first error reported by concurrent workers.
type FirstError struct {
	mu  sync.Mutex
	err error
}

// Set records err if it is the first non-nil one.
func (f *FirstError) Set(err error) {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.mu.Unlock()
}

// Err returns the first error recorded, or nil.
func (f *FirstError) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// RunFor runs workers goroutines for d, each calling its op (from
// newOp, called once per worker so that it can own buffers) until the
// time is up, and counts the calls that succeeded and failed (a failure
// pauses its worker 1 ms). firstErr is the first failure, if any.
func RunFor(workers int, d time.Duration, newOp func() func() error) (ok, bad int64, took time.Duration, firstErr error) {
	var nOK, nBad atomic.Int64
	var first FirstError
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for range workers {
		op := newOp()
		wg.Go(func() {
			for time.Now().Before(end) {
				if err := op(); err != nil {
					nBad.Add(1)
					first.Set(err)
					time.Sleep(time.Millisecond)
					continue
				}
				nOK.Add(1)
			}
		})
	}
	wg.Wait()
	return nOK.Load(), nBad.Load(), time.Since(start), first.Err()
}
