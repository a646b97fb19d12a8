package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// procStat is what /proc/PID/stat says about a process.
type procStat struct {
	pid     int
	state   byte
	session int
	ticks   int64 // utime + stime + cutime + cstime
}

func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	// The command name is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return procStat{}, false
	}
	st := procStat{pid: pid, state: f[0][0]}
	st.session, _ = strconv.Atoi(f[3])
	for _, k := range []int{11, 12, 13, 14} {
		v, _ := strconv.ParseInt(f[k], 10, 64)
		st.ticks += v
	}
	return st, true
}

// sessionProcs lists the processes whose session id is sid; zombies only
// when asked (their CPU time is not yet in the parent's).
func sessionProcs(sid int, zombies bool) []procStat {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []procStat
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, ok := readStat(pid)
		if ok && st.session == sid && (zombies || st.state != 'Z') {
			out = append(out, st)
		}
	}
	return out
}

// fieldKB reads a "Key:   N kB" line of a /proc file.
func fieldKB(path, key string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			v, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return v
		}
	}
	return 0
}

// rssKB is one process's resident set in KiB (0 when it is gone).
func rssKB(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize()) / 1024
}

const clockTicks = 100 // USER_HZ on Linux

func sidFlag(name string, args []string) (*flag.FlagSet, *int) {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	sid := fs.Int("sid", 0, "session id (the pid of a process started with setsid)")
	return fs, sid
}

func cmdCPU(args []string) error {
	fs, sid := sidFlag("cpu", args)
	fs.Parse(args)
	var t int64
	for _, p := range sessionProcs(*sid, true) {
		t += p.ticks
	}
	fmt.Printf("%.2f\n", float64(t)/clockTicks)
	return nil
}

func cmdPids(args []string) error {
	fs, sid := sidFlag("pids", args)
	fs.Parse(args)
	for _, p := range sessionProcs(*sid, false) {
		fmt.Println(p.pid)
	}
	return nil
}

// cmdWatch samples the session's summed RSS every 100 ms (and PSS, which
// splits the pages forked children share, every 500 ms) until the stop
// file appears or -max passes, and prints the peaks.
func cmdWatch(args []string) error {
	fs, sid := sidFlag("watch", args)
	stop := fs.String("stop", "", "stop when this file exists")
	maxd := fs.Duration("max", 15*time.Minute, "stop after this long in any case")
	fs.Parse(args)
	if *sid <= 0 || *stop == "" {
		return errors.New("-sid and -stop are required")
	}
	var rssPeak, pssPeak int64
	procsPeak := 0
	end := time.Now().Add(*maxd)
	for i := 0; ; i++ {
		ps := sessionProcs(*sid, false)
		var rss, pss int64
		for _, p := range ps {
			rss += rssKB(p.pid)
			if i%5 == 0 {
				pss += fieldKB("/proc/"+strconv.Itoa(p.pid)+"/smaps_rollup", "Pss")
			}
		}
		rssPeak, pssPeak, procsPeak = max(rssPeak, rss), max(pssPeak, pss), max(procsPeak, len(ps))
		if _, err := os.Stat(*stop); err == nil || time.Now().After(end) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("rss_peak_kb=%d pss_peak_kb=%d procs_peak=%d\n", rssPeak, pssPeak, procsPeak)
	return nil
}
