package tlsrpt

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var stsStrings = []string{"version: STSv1", "mode: testing", "mx: *.mail.example.net", "max_age: 86400"}

func TestAggregateAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{now: day1.Add(10 * time.Hour)}
	c := openT(t, dir, clk)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := Result{Domain: "Example.NET.", PolicyType: PolicySTS, PolicyStrings: stsStrings,
				MXHost: "mx1.mail.example.net", ReceivingIP: "192.0.2.1", Success: i%4 != 0}
			if !r.Success {
				r.FailureType, r.FailureDetail = CertificateExpired, "x509: certificate has expired"
			}
			c.Record(r)
		}()
	}
	wg.Wait()
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	// Restart: the counts come back and keep growing.
	c2 := openT(t, dir, clk)
	c2.Record(Result{Domain: "example.net", PolicyType: PolicySTS, PolicyStrings: stsStrings, MXHost: "mx2.mail.example.net",
		FailureType: StartTLSNotSupported})
	c2.Record(Result{Domain: "other.example", PolicyType: PolicyNotFound, MXHost: "mx.other.example", Success: true})
	clk.set(day1.Add(25 * time.Hour)) // next day goes to another file
	c2.Record(Result{Domain: "example.net", PolicyType: PolicySTS, PolicyStrings: stsStrings, MXHost: "mx1.mail.example.net", Success: true})
	if err := c2.Flush(); err != nil {
		t.Fatal(err)
	}
	c3 := openT(t, dir, clk)
	agg := c3.Aggregate(day1, "example.net")
	if agg == nil || len(agg.Policies) != 1 {
		t.Fatalf("aggregate after restart: %+v", agg)
	}
	p := agg.Policies[0]
	if p.Success != 30 || p.Failure != 11 {
		t.Errorf("success/failure = %d/%d, want 30/11", p.Success, p.Failure)
	}
	counts := map[string]int64{}
	for _, f := range p.Failures {
		counts[f.ResultType+" "+f.MXHost] += f.Count
	}
	if counts["certificate-expired mx1.mail.example.net"] != 10 || counts["starttls-not-supported mx2.mail.example.net"] != 1 {
		t.Errorf("failure details: %v", counts)
	}
	if a := c3.Aggregate(day1.Add(24*time.Hour), "example.net"); a == nil || a.Policies[0].Success != 1 {
		t.Errorf("second day: %+v", a)
	}
	if a := c3.Aggregate(day1, "other.example"); a == nil || a.Policies[0].Type != PolicyNotFound {
		t.Errorf("other.example: %+v", a)
	}
	for _, f := range []string{"2026-12-03.json", "2026-12-04.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
}

func TestDetailsBounded(t *testing.T) {
	clk := &clock{now: day1.Add(time.Hour)}
	c := openT(t, t.TempDir(), clk)
	c.MaxDetails = 3
	long := make([]byte, 5000)
	for i := range long {
		long[i] = 'x'
	}
	for i := range 100 {
		c.Record(Result{Domain: "example.net", PolicyType: PolicyTLSA, MXHost: fmt.Sprintf("mx%d.example.net", i),
			FailureType: ValidationFailure, FailureDetail: string(long)})
	}
	c.Record(Result{Domain: "example.net", PolicyType: PolicyTLSA, MXHost: "mx.example.net", FailureType: "bogus-type"})
	p := c.Aggregate(day1, "example.net").Policies[0]
	if p.Failure != 101 {
		t.Errorf("failure count %d, want 101", p.Failure)
	}
	if len(p.Failures) > 3+2 {
		t.Errorf("%d failure entries, want at most 5", len(p.Failures))
	}
	var sum int64
	for _, f := range p.Failures {
		sum += f.Count
		if len(f.Detail) > maxDetailLen {
			t.Errorf("detail of %d bytes kept", len(f.Detail))
		}
		if !validResultType(f.ResultType) {
			t.Errorf("result type %q recorded", f.ResultType)
		}
	}
	if sum != 101 {
		t.Errorf("failure entries sum to %d, want 101", sum)
	}
}

func TestDomainsBounded(t *testing.T) {
	clk := &clock{now: day1.Add(time.Hour)}
	c := openT(t, t.TempDir(), clk)
	c.MaxDomains = 5
	for i := range 20 {
		c.Record(Result{Domain: fmt.Sprintf("d%d.example", i), PolicyType: PolicyNotFound, MXHost: "mx", Success: true})
	}
	n := 0
	for i := range 20 {
		if c.Aggregate(day1, fmt.Sprintf("d%d.example", i)) != nil {
			n++
		}
	}
	if n != 5 {
		t.Errorf("%d domains kept, want 5", n)
	}
}

func TestDamagedStateFileMovedAside(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "2026-12-03.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := openT(t, dir, &clock{now: day1})
	if c.Aggregate(day1, "x") != nil {
		t.Error("data from a damaged file")
	}
	if _, err := os.Stat(filepath.Join(dir, "2026-12-03.json.corrupt")); err != nil {
		t.Error(err)
	}
	// The state file itself is plain JSON with the day in it.
	c.Record(Result{Domain: "a.example", PolicyType: PolicyNotFound, MXHost: "mx", Success: true})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "2026-12-03.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st dayState
	if err := json.Unmarshal(b, &st); err != nil || st.Day != "2026-12-03" {
		t.Errorf("state file: %v %q", err, b)
	}
}

func TestRecordRejectsBadDomains(t *testing.T) {
	c := openT(t, t.TempDir(), &clock{now: day1})
	for _, d := range []string{"", "a.example\r\nBcc: x@y", "a b.example", "../x", "a/b", "a..b"} {
		c.Record(Result{Domain: d, PolicyType: PolicyNotFound, MXHost: "mx", Success: true})
		if c.Aggregate(day1, strings.ToLower(d)) != nil {
			t.Errorf("domain %q recorded", d)
		}
	}
}
