// Package policy is postern's per-recipient policy engine (SPEC §4).
//
// A policy file names a default plan (an ordered list of protection
// methods), the level the tls method must reach, per-domain TLS requirements
// and an ordered list of rules. For each recipient of a message, [Policy.Decide]
// picks the first rule whose matchers all hold (or the defaults when none
// does), asks a [Checker] whether each method of the plan is available for the
// recipient, and returns a [Decision] naming the first available method and
// recording why each method was taken or refused. When the chosen method turns
// out to be unusable at delivery time (for tls: the recipient's server does not
// meet the TLS requirement), [Policy.Next] falls through to the next available
// method of the plan.
//
// # Security levels only go up
//
// A plan can never end in plaintext: there is no plaintext method. The four
// methods are smime and pgp (end-to-end encryption), tls (the message is sent
// unchanged, but only over a TLS session meeting Decision.TLSLevel) and portal
// (stored encrypted, read over HTTPS). A plan that runs out of available
// methods is deferred or bounced (Rule.OnUnavailable); it never degrades to
// sending in the clear.
//
// Decision.TLSLevel is what the tls method needs: the policy's tls.level
// ("verify" by default, or "encrypt"), raised to the recipient domain's
// requirement from domains: when that is stricter (none < encrypt < verify <
// mta-sts, dane). A domain entry can raise the level, never lower it: a domain
// with tls: none still gets the policy's tls.level for the tls method, and
// tls: none only means that encrypted copies (smime, pgp, portal notices) may
// travel to that domain without a TLS requirement of their own.
//
// # Files and reloads
//
// [Load] and [Parse] are strict: unknown keys, methods or matchers, bad globs
// or regular expressions, duplicate rule names and the like are all reported
// together as an [*Error] whose problems read "file:line: problem". A parsed
// *Policy is immutable and safe for concurrent use. [Holder] keeps the running
// policy and swaps in a new one only when it is valid; [Watch] notices when
// the files change.
package policy
