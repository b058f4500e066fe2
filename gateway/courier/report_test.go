package courier

import (
	"context"
	"testing"

	"github.com/postern-mail/postern/gateway/deliver"
	"github.com/postern-mail/postern/gateway/queue"
)

// A TLS report bypasses the policy: even a policy that would only allow
// the portal sends it over opportunistic TLS (RFC 8460 §5.3).
func TestReportBypassesPolicy(t *testing.T) {
	f := newFixture(t, "methods: [portal]\n", testChecker{"portal": true})
	it := f.enqueue(queue.Envelope{From: "postmaster@gw.example.org", Report: true}, rcpts("tlsrpt@dest.test")...)
	f.c.Process(context.Background(), it)
	reqs := f.tt.requests()
	if len(reqs) != 1 || reqs[0].TLSLevel != deliver.LevelOpportunistic {
		t.Fatalf("requests: %+v", reqs)
	}
	if it.Rcpts[0].State != queue.Delivered || it.Rcpts[0].Rule != "internal:tls-report" || it.Rcpts[0].Method != "tls" {
		t.Fatalf("recipient: %+v", it.Rcpts[0])
	}
	// An ordinary message under the same policy goes to the portal
	// method (here without an encoder: never over plain TLS).
	it2 := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("bob@dest.test")...)
	f.c.Process(context.Background(), it2)
	if len(f.tt.requests()) != 1 {
		t.Fatal("a portal-only recipient was delivered over TLS")
	}
}
