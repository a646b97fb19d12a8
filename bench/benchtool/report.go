package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// row is one receiver x shape cell of results.tsv (written by run.sh).
type row struct {
	key, label, shape        string
	mps, mpsMin, mpsMax      float64
	fails                    int
	cpuMS, p50, p99, lat1P50 float64
	rss, pss                 float64
	procs                    int
	note                     string
}

// The columns of results.tsv, in order.
var tsvColumns = []string{"key", "label", "shape", "msgs", "mps", "mps_min", "mps_max", "fails",
	"cpu_ms_per_msg", "p50_ms", "p99_ms", "lat1_p50_ms", "rss_mib", "pss_mib", "procs", "note"}

func readTSV(path string) ([]row, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rows []row
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		c := strings.Split(sc.Text(), "\t")
		if len(c) < len(tsvColumns) || c[0] == "key" {
			continue
		}
		num := func(i int) float64 { v, _ := strconv.ParseFloat(c[i], 64); return v }
		rows = append(rows, row{key: c[0], label: c[1], shape: c[2], mps: num(4), mpsMin: num(5), mpsMax: num(6),
			fails: int(num(7)), cpuMS: num(8), p50: num(9), p99: num(10), lat1P50: num(11),
			rss: num(12), pss: num(13), procs: int(num(14)), note: c[15]})
	}
	return rows, sc.Err()
}

// readExtras reads "NAME k=v k=v" lines (the big message, idle and chain
// checks) into NAME -> k -> v.
func readExtras(path string) map[string]map[string]string {
	out := map[string]map[string]string{}
	b, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		m := map[string]string{}
		for _, kv := range f[1:] {
			if k, v, ok := strings.Cut(kv, "="); ok {
				m[k] = v
			}
		}
		out[f[0]] = m
	}
	return out
}

var shapeTitles = map[string]string{
	"1k-one":       "1 KiB, one message per connection, 20 sessions",
	"1k-many":      "1 KiB, many messages per connection (smtp-source -d), 20 sessions",
	"100k-many":    "100 KiB, many messages per connection, 20 sessions",
	"1k-many-s200": "1 KiB, many messages per connection, 200 sessions",
}

func cmdReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	tsv := fs.String("tsv", "", "results.tsv")
	extras := fs.String("extras", "", "extras.txt (big, idle, chain, stats)")
	ref := fs.String("ref", "sluice", "the receiver the ratios are taken against")
	header := fs.String("header", "", "a line printed first (run settings)")
	fs.Parse(args)
	rows, err := readTSV(*tsv)
	if err != nil {
		return err
	}
	if *header != "" {
		fmt.Println(*header)
	}
	fmt.Printf("cores: %d. Absolute figures move by 20%% or more between runs on this machine: only the ratios within one run count.\n", runtime.NumCPU())
	fmt.Println("x = the figure divided by Sluice's (default inbound chain, durable Maildir) in the same shape; msgs/s is the median of the timed runs; latency from benchtool lat (no pipelining; one/conn shapes include connect and EHLO); memory is the peak RSS summed over all of the receiver's processes (PSS in brackets where forked children share pages).")
	var shapes []string
	cells := map[string]map[string]row{}
	for _, r := range rows {
		if cells[r.shape] == nil {
			cells[r.shape] = map[string]row{}
			shapes = append(shapes, r.shape)
		}
		cells[r.shape][r.key] = r
	}
	for _, sh := range shapes {
		title := shapeTitles[sh]
		if title == "" {
			title = sh
		}
		fmt.Printf("\n%s: %s\n\n", sh, title)
		fmt.Println("| receiver | msgs/s | x | p50 ms | x | p99 ms | x | peak RSS MiB | x | CPU ms/msg | note |")
		fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
		base, hasBase := cells[sh][*ref]
		for _, r := range rows {
			if r.shape != sh {
				continue
			}
			x := func(v, b float64) string {
				if !hasBase || b == 0 || v == 0 {
					return ""
				}
				return fmt.Sprintf("%.2f", v/b)
			}
			mem := fmt.Sprintf("%.0f", r.rss)
			if r.procs > 1 {
				mem += fmt.Sprintf(" (%.0f)", r.pss)
			}
			fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.label,
				orDash(r.mps, "%.0f"), x(r.mps, base.mps), orDash(r.p50, "%.2f"), x(r.p50, base.p50),
				orDash(r.p99, "%.2f"), x(r.p99, base.p99), mem, x(r.rss, base.rss), orDash(r.cpuMS, "%.3f"), r.note)
		}
	}
	targets(cells, shapes, readExtras(*extras))
	return nil
}

func orDash(v float64, format string) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

// targets prints each target of issue 5 with the measured figure.
func targets(cells map[string]map[string]row, shapes []string, ex map[string]map[string]string) {
	fmt.Println("\nTargets (measured in this run):")
	verdict := func(ok bool) string {
		if ok {
			return "met   "
		}
		return "MISSED"
	}
	line := func(ok bool, format string, a ...any) {
		fmt.Printf("  %s  %s\n", verdict(ok), fmt.Sprintf(format, a...))
	}
	for _, sh := range shapes {
		d, sink := cells[sh]["sluice-discard"], cells[sh]["smtp-sink"]
		if d.mps > 0 && sink.mps > 0 {
			line(d.mps >= 0.8*sink.mps, "%-13s Sluice+discard >= 0.8x smtp-sink msgs/s: %.2fx (%.0f vs %.0f)", sh, d.mps/sink.mps, d.mps, sink.mps)
		}
	}
	for _, sh := range shapes {
		if d := cells[sh]["sluice-discard"]; d.rss > 0 && !strings.HasSuffix(sh, "-s200") {
			line(d.rss < 50, "%-13s Sluice+discard peak RSS < 50 MiB with 20 sessions: %.0f MiB", sh, d.rss)
		}
	}
	for _, peer := range []struct {
		key  string
		want float64
	}{{"haraka", 2}, {"postfix", 4}} {
		for _, sh := range shapes {
			s, p := cells[sh]["sluice"], cells[sh][peer.key]
			if s.mps == 0 || p.mps == 0 {
				continue
			}
			tag := ""
			if sh != "1k-many" {
				tag = " (the target is set on 1k-many; shown for reference)"
			}
			line(s.mps >= peer.want*p.mps, "%-13s Sluice (Maildir, fsync'd) >= %.0fx %s msgs/s: %.2fx (%.0f vs %.0f)%s",
				sh, peer.want, p.label, s.mps/p.mps, s.mps, p.mps, tag)
		}
	}
	if b := ex["big"]; b != nil {
		g := atof(b["growth_kb"]) / 1024
		line(g < 16, "100 MiB message: Sluice's RSS grows < 16 MiB: %.1f MiB (%s s, streamed to the spool and the Maildir)", g, b["secs"])
	}
	if i := ex["idle"]; i != nil {
		rss := atof(i["rss_kb"]) / 1024
		line(rss < 300, "%s idle connections: RSS < 300 MiB: %.0f MiB (%.1f KiB per connection)", i["conns"], rss, atof(i["per_conn_kb"]))
		line(atof(i["next_greet_ms"]) < 100, "the next client's greeting < 100 ms with them connected: %s ms (worst of 5: %s ms)", i["next_greet_ms"], i["worst_of_5_ms"])
	}
	if c := ex["chain"]; c != nil {
		ns := atof(c["ns_per_plugin"])
		line(ns < 1000 && c["allocs_per_op"] == "0", "a declining plugin costs < 1 µs and 0 allocs: %.1f ns, %s allocs per call (BenchmarkChainRcptDeclined, 10 plugins)", ns, c["allocs_per_op"])
	}
	if s := ex["stats"]; s != nil {
		base, rec, mon := atof(s["base_ns"]), atof(s["recorder_ns"]), atof(s["monitor_ns"])
		if base > 0 {
			fmt.Printf("\nThe operator's figures, per message (BenchmarkServerLoopback/1k-many, median of 5; loopback noise is a few %%):\n")
			fmt.Printf("  without them %.1f µs, %s allocs\n", base/1000, s["base_allocs"])
			fmt.Printf("  Recorder (smtpd stats, /metrics; always on): %.1f µs (%+.1f µs, %+.1f%%), %s allocs\n",
				rec/1000, (rec-base)/1000, 100*(rec-base)/base, s["recorder_allocs"])
			fmt.Printf("  Recorder and the live view's Bus ([admin] set): %.1f µs (%+.1f µs, %+.1f%%), %s allocs\n",
				mon/1000, (mon-base)/1000, 100*(mon-base)/base, s["monitor_allocs"])
		}
	}
}

func atof(s string) float64 { v, _ := strconv.ParseFloat(s, 64); return v }
