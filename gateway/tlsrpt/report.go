package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
)

// MediaType is the media type of a gzip-compressed report (RFC 8460 §5.3, §5.4).
const MediaType = "application/tlsrpt+gzip"

// Report is the aggregate report (RFC 8460 §4.4).
type Report struct {
	OrganizationName string         `json:"organization-name"`
	DateRange        DateRange      `json:"date-range"`
	ContactInfo      string         `json:"contact-info"`
	ReportID         string         `json:"report-id"`
	Policies         []PolicyReport `json:"policies"`
}

// DateRange is the period a report covers (RFC 8460 §4.4 "date-range").
type DateRange struct {
	Start time.Time `json:"start-datetime"`
	End   time.Time `json:"end-datetime"`
}

// PolicyReport is the result for one policy (RFC 8460 §4.4 "policies").
type PolicyReport struct {
	Policy         ReportPolicy    `json:"policy"`
	Summary        Summary         `json:"summary"`
	FailureDetails []FailureDetail `json:"failure-details,omitempty"`
}

// ReportPolicy identifies a policy (RFC 8460 §4.4 "policy").
type ReportPolicy struct {
	Type   string   `json:"policy-type"`
	String []string `json:"policy-string,omitempty"`
	Domain string   `json:"policy-domain"`
	MXHost []string `json:"mx-host,omitempty"`
}

// Summary counts sessions (RFC 8460 §4.4 "summary").
type Summary struct {
	TotalSuccessfulSessionCount int64 `json:"total-successful-session-count"`
	TotalFailureSessionCount    int64 `json:"total-failure-session-count"`
}

// FailureDetail is one kind of failure (RFC 8460 §4.4 "failure-details").
type FailureDetail struct {
	ResultType          string `json:"result-type"`
	SendingMTAIP        string `json:"sending-mta-ip,omitempty"`
	ReceivingMXHostname string `json:"receiving-mx-hostname,omitempty"`
	ReceivingIP         string `json:"receiving-ip,omitempty"`
	FailedSessionCount  int64  `json:"failed-session-count"`
	FailureReasonCode   string `json:"failure-reason-code,omitempty"`
}

// DayRange returns the start and end of the UTC day holding t; the end is
// the last second of the day, as in RFC 8460 §4.4's example.
func DayRange(t time.Time) (time.Time, time.Time) {
	y, m, d := t.UTC().Date()
	start := time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
	return start, start.Add(24*time.Hour - time.Second)
}

// ReportID is the report-id of the report for domain on day, made
// deterministic so that a report sent again after a crash can be
// recognised as the same one.
func ReportID(submitter string, day time.Time, domain string) string {
	start, _ := DayRange(day)
	return start.Format("20060102") + "." + domain + "@" + submitter
}

// BuildReport returns the JSON report (RFC 8460 §4.4) of one policy domain
// for the UTC day holding day. org is the organization-name, contact the
// contact-info, submitter the reporting host (used in the report-id).
func BuildReport(org, contact, submitter string, day time.Time, domain string, agg *DomainAggregate) ([]byte, error) {
	if agg == nil {
		return nil, fmt.Errorf("tlsrpt: no data for %s", domain)
	}
	start, end := DayRange(day)
	r := Report{
		OrganizationName: org,
		DateRange:        DateRange{Start: start, End: end},
		ContactInfo:      contact,
		ReportID:         ReportID(submitter, day, domain),
		Policies:         make([]PolicyReport, 0, len(agg.Policies)),
	}
	for _, p := range agg.Policies {
		pr := PolicyReport{
			Policy:  ReportPolicy{Type: p.Type, String: p.Strings, Domain: domain, MXHost: policyMXHosts(p)},
			Summary: Summary{TotalSuccessfulSessionCount: p.Success, TotalFailureSessionCount: p.Failure},
		}
		for _, f := range p.Failures {
			pr.FailureDetails = append(pr.FailureDetails, FailureDetail{ResultType: f.ResultType,
				ReceivingMXHostname: f.MXHost, ReceivingIP: f.ReceivingIP,
				FailedSessionCount: f.Count, FailureReasonCode: f.Detail})
		}
		r.Policies = append(r.Policies, pr)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("tlsrpt: encode report for %s: %w", domain, err)
	}
	return b, nil
}

// policyMXHosts is the mx-host of a policy: the MTA-STS mx patterns for
// sts (RFC 8460 §4.4: "the MX host pattern(s)"), else the MX hosts seen.
func policyMXHosts(p *PolicyAggregate) []string {
	if p.Type == PolicySTS {
		var out []string
		for _, s := range p.Strings {
			if v, ok := strings.CutPrefix(s, "mx:"); ok {
				out = append(out, strings.TrimSpace(v))
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	out := append([]string(nil), p.MXHosts...)
	sort.Strings(out)
	return out
}

// Gzip compresses a report (RFC 8460 §5.2).
func Gzip(report []byte) ([]byte, error) {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(report); err != nil {
		return nil, fmt.Errorf("tlsrpt: gzip: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("tlsrpt: gzip: %w", err)
	}
	return b.Bytes(), nil
}
