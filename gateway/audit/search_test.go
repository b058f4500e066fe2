package audit

import (
	"bytes"
	"encoding/csv"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// searchLog writes a small log with known contents and returns its bytes.
func searchLog(t *testing.T) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, _ := openTest(t, path)
	base := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	recs := []Record{
		{TS: base, Event: EventDecision, QueueID: "q1", From: "Alice@Example.org", Rcpt: "bob@x.example", Method: "pgp"},
		{TS: base.Add(1 * time.Minute), Event: EventDelivery, QueueID: "q1", Rcpt: "bob@x.example", Method: "pgp", Result: ResultDelivered},
		{TS: base.Add(2 * time.Minute), Event: EventDecision, QueueID: "q2", From: "alice@example.org", Rcpt: "carol@y.example", Method: "tls"},
		{TS: base.Add(3 * time.Minute), Event: EventFallback, QueueID: "q2", From: "alice@example.org", Rcpt: "Carol@Y.example", Method: "portal", PortalID: "p1"},
		{TS: base.Add(4 * time.Minute), Event: EventPortal, Rcpt: "carol@y.example", PortalID: "p1", Reason: "opened"},
		{TS: base.Add(5 * time.Minute), Event: EventDecision, QueueID: "q3", From: "dave@example.org", Rcpt: "bob@x.example", Method: "smime"},
	}
	for _, r := range recs {
		if _, err := l.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestSearchFilters(t *testing.T) {
	data := searchLog(t)
	base := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		q    Query
		want string // queue_id/portal_id per match, in order
	}{
		{"all", Query{}, "q1 q1 q2 q2 p1 q3"},
		{"rcpt case-insensitive", Query{Rcpt: "CAROL@y.example"}, "q2 q2 p1"},
		{"rcpt exact, not substring", Query{Rcpt: "bob@x.exampl"}, ""},
		{"from case-insensitive", Query{From: "alice@example.org"}, "q1 q2 q2"},
		{"method", Query{Method: "pgp"}, "q1 q1"},
		{"method case-insensitive", Query{Method: "PORTAL"}, "q2"},
		{"event", Query{Event: EventDecision}, "q1 q2 q3"},
		{"since inclusive", Query{Since: base.Add(3 * time.Minute)}, "q2 p1 q3"},
		{"until exclusive", Query{Until: base.Add(2 * time.Minute)}, "q1 q1"},
		{"window", Query{Since: base.Add(time.Minute), Until: base.Add(4 * time.Minute)}, "q1 q2 q2"},
		{"since in another zone", Query{Since: base.Add(5 * time.Minute).In(time.FixedZone("E", -5*3600))}, "q3"},
		{"combined", Query{Rcpt: "bob@x.example", Event: EventDecision, Method: "smime"}, "q3"},
		{"no match", Query{From: "nobody@example.org"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			err := Search(bytes.NewReader(data), tc.q, func(r Record) error {
				id := r.QueueID
				if id == "" {
					id = r.PortalID
				}
				got = append(got, id)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if s := strings.Join(got, " "); s != tc.want {
				t.Errorf("got %q, want %q", s, tc.want)
			}
		})
	}
}

func TestSearchStopsOnCallbackError(t *testing.T) {
	stop := errors.New("stop")
	calls := 0
	err := Search(bytes.NewReader(searchLog(t)), Query{}, func(Record) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("Search = %v after %d calls", err, calls)
	}
}

func TestSearchBadLine(t *testing.T) {
	data := append(searchLog(t), "not json\n"...)
	n := 0
	err := Search(bytes.NewReader(data), Query{}, func(Record) error { n++; return nil })
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Line != 7 || n != 6 {
		t.Fatalf("Search = %v after %d records, want VerifyError at line 7 after 6", err, n)
	}
}

func TestWriteJSONIsStoredLine(t *testing.T) {
	data := searchLog(t)
	var out bytes.Buffer
	if err := Search(bytes.NewReader(data), Query{}, func(r Record) error { return WriteJSON(&out, r) }); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), data) {
		t.Errorf("WriteJSON output differs from the log:\n%s\nvs\n%s", out.Bytes(), data)
	}
	// And it verifies as a log in its own right.
	if n, err := Verify(&out); err != nil || n != 6 {
		t.Errorf("Verify(WriteJSON output) = %d, %v", n, err)
	}
}

func TestCSVWriter(t *testing.T) {
	ts := time.Date(2026, 12, 3, 10, 0, 0, 123_000_000, time.UTC)
	recs := []Record{
		{TS: ts, Event: EventDelivery, QueueID: "q1", MessageID: "<m@a>", From: "a@example.org", Rcpt: "b@x.example",
			Rule: "r", Method: "tls", Result: ResultDelivered, Reason: "ok, \"fine\"", MX: "mx1.x.example",
			TLS:      &TLSInfo{Version: "TLS1.3", Cipher: "c", Verified: true, Policy: PolicyDANE},
			Response: "250 2.0.0 OK", Hash: "h1"},
		{TS: ts.Add(time.Second), Event: EventPortal, PortalID: "p9", Reason: "line1\nline2", Hash: "h2"},
	}
	var out bytes.Buffer
	w := NewCSVWriter(&out)
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	want := "ts,event,queue_id,message_id,from,rcpt,rule,method,result,reason,mx,tls_version,tls_verified,tls_policy,response,portal_id,hash\n" +
		"2026-12-03T10:00:00.123Z,delivery,q1,<m@a>,a@example.org,b@x.example,r,tls,delivered,\"ok, \"\"fine\"\"\",mx1.x.example,TLS1.3,true,dane,250 2.0.0 OK,,h1\n" +
		"2026-12-03T10:00:01.123Z,portal,,,,,,,,\"line1\nline2\",,,,,,p9,h2\n"
	if out.String() != want {
		t.Errorf("CSV:\n%s\nwant:\n%s", out.String(), want)
	}
	// Round trip through a CSV reader: 17 columns everywhere.
	rows, err := csv.NewReader(&out).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || len(rows[1]) != 17 || rows[2][9] != "line1\nline2" {
		t.Errorf("rows = %q", rows)
	}
}

func TestCSVWriterHeaderOnlyWhenEmpty(t *testing.T) {
	var out bytes.Buffer
	w := NewCSVWriter(&out)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != strings.Join(csvHeader(), ",")+"\n" {
		t.Errorf("empty CSV = %q", got)
	}
}
