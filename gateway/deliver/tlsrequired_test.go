package deliver

import (
	"testing"

	"github.com/postern-mail/postern/test/support/testpki"
)

// RFC 8689 §5: "TLS-Required: No" relaxes the recipient's published DANE
// policy, but never postern's own level: at verify a PKIX-valid session
// still delivers, while at dane (an admin domains: requirement) and with
// REQUIRETLS the mismatch still refuses.
func TestTLSRequiredNoRelaxesPublishedPolicyOnly(t *testing.T) {
	ca := testpki.NewCA(t, "deliver test CA")
	cert := ca.Server(t, "mx1.dane.test")
	other := testpki.SelfSigned(t, "mx1.dane.test")
	cases := []struct {
		level      string
		requireTLS bool
		want       Outcome
	}{
		{LevelVerify, false, Delivered},
		{LevelDANE, false, TLSUnavailable},
		{LevelVerify, true, Permanent},
	}
	for _, tc := range cases {
		e := newEnv(t)
		rcv := startReceiver(t, rcvConfig{cert: &cert, requireTLS: true})
		e.secureMX("dane.test", "mx1.dane.test", "127.0.0.2", rcv.addr)
		e.tlsa("mx1.dane.test", eeSPKI(t, other)) // does not match the served certificate
		tr := &MX{Opt: daneOptions(e, ca.Pool())}
		req := request(tc.level, testBody, "b@dane.test")
		req.Params.TLSRequiredNo = true
		req.Params.RequireTLS = tc.requireTLS
		res := one(t, tr.Deliver(ctxT(t), req))
		if res.Outcome != tc.want {
			t.Errorf("level %s requiretls %v: got %v (%s), want %v", tc.level, tc.requireTLS, res.Outcome, res.Response, tc.want)
		}
		if tc.want == Delivered && (res.TLS == nil || res.TLS.Policy != PolicyPKIX) {
			t.Errorf("level %s: delivered without PKIX validation: %+v", tc.level, res.TLS)
		}
	}
}
