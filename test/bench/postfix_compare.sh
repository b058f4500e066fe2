#!/usr/bin/env bash
# postfix_compare.sh: postern and Postfix side by side, same workload, same
# machine, loopback only. Not part of CI; see "postern and Postfix" in
# README.md beside this script for the set-up and how to read the result.
#
#   sudo ./test/bench/postfix_compare.sh            # N=2000, sessions 1 and 8
#   N=500 SESSIONS="1 4" REPEAT=2 ./test/bench/postfix_compare.sh
#
# Both MTAs take smtp-source's messages over plain SMTP on loopback, queue
# them durably and relay them over STARTTLS (level encrypt) to tlssink, a
# small go-smtp receiver built here, which counts them; the clock stops when
# it has all of them. NOCACHE=0 skips the extra Postfix runs without its TLS
# session cache.
#
# Needs root: it installs the Debian package postfix when missing (for
# postfix and smtp-source) and runs a throwaway Postfix instance whose
# config and queue live in a temporary folder. Everything it starts is
# stopped, and the folder removed, on exit (KEEP=1 keeps the folder).
set -euo pipefail

N=${N:-2000}                  # messages per run
SESSIONS=${SESSIONS:-"1 8"}   # parallel smtp-source sessions, one run each
SIZE=${SIZE:-10240}           # smtp-source -l: payload bytes per message
REPEAT=${REPEAT:-1}           # rounds of runs
WARMUP=${WARMUP:-50}          # untimed messages through each MTA first
RUN_LIMIT=${RUN_LIMIT:-120}   # seconds allowed for one run
RCPT_DOMAIN=rcpt.bench.example

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
T=""
sink_pid="" postern_pid="" src_pid="" pf_started=0
failed=0

log() { printf '%s\n' "$*" >&2; }
die() {
	log "postfix_compare: $*"
	exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root (installs postfix, runs a Postfix instance)"
for tool in go ss awk ps timeout; do
	command -v "$tool" >/dev/null || die "$tool not found"
done

# stop_pid PID: TERM, wait up to 10 s, then KILL. Only pids this script
# started are ever passed here.
stop_pid() {
	local pid=$1
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	set +e
	stop_pid "$src_pid"
	if [ "$pf_started" = 1 ]; then
		local mpid
		mpid=$(pf_master_pid)
		/usr/sbin/postfix -c "$T/pf/etc" stop >/dev/null 2>&1
		if [ -n "$mpid" ]; then
			for _ in $(seq 100); do
				kill -0 "$mpid" 2>/dev/null || break
				sleep 0.1
			done
			if kill -0 "$mpid" 2>/dev/null; then
				log "Postfix master $mpid still running after 'postfix stop'; killing it"
				stop_pid "$mpid"
			fi
		fi
	fi
	stop_pid "$postern_pid"
	stop_pid "$sink_pid"
	if [ -n "$T" ] && [ -d "$T" ]; then
		if [ "${KEEP:-0}" = 1 ]; then
			log "kept $T"
		else
			rm -rf "$T"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Queues and logs go under TMPDIR (default /tmp). fsync cost is much of
# what is measured, so keep it on a real disk, not tmpfs: the file system
# type is printed with the results.
T=$(mktemp -d "${TMPDIR:-/tmp}/postfix-compare.XXXXXX")
chmod 755 "$T" # Postfix daemons drop to user postfix

# --- Postfix and smtp-source ----------------------------------------------

# system_master_pid prints the pid of a running system Postfix (default
# config), if any.
system_master_pid() {
	local f=/var/spool/postfix/pid/master.pid pid
	[ -r "$f" ] || return 0
	pid=$(tr -d ' \n' <"$f")
	if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = master ]; then
		echo "$pid"
	fi
}

if ! [ -x /usr/sbin/postfix ] || ! [ -x /usr/sbin/smtp-source ]; then
	before=$(system_master_pid)
	log "installing postfix (debconf: No configuration)"
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >"$T/apt.log" 2>&1; then
		apt-get update -qq >>"$T/apt.log" 2>&1
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >>"$T/apt.log" 2>&1 ||
			die "apt-get install postfix failed: $(tail -5 "$T/apt.log")"
	fi
	# The package must not leave a system MTA behind: disable the unit
	# and stop a master the install started.
	if command -v systemctl >/dev/null; then
		if [ -d /run/systemd/system ]; then
			systemctl disable --now postfix.service >/dev/null 2>&1 || true
		else
			systemctl disable postfix.service >/dev/null 2>&1 || true # offline: removes the links
		fi
	fi
	after=$(system_master_pid)
	if [ -n "$after" ] && [ "$after" != "$before" ]; then
		log "stopping the system Postfix the install started (pid $after)"
		/usr/sbin/postfix stop >/dev/null 2>&1 || stop_pid "$after"
	fi
fi
for bin in postfix smtp-source postconf; do
	[ -x "/usr/sbin/$bin" ] || die "/usr/sbin/$bin missing after installing postfix"
done
if [ -n "$(ss -Hltn 'sport = :25')" ]; then
	log "note: something already listens on port 25; this script does not use it"
fi

# --- helpers ---------------------------------------------------------------

# free_port prints a TCP port on which nothing listens or connects.
free_port() {
	local p
	for _ in $(seq 100); do
		p=$((20000 + RANDOM % 40000))
		if [ -z "$(ss -Htan "( sport = :$p or dport = :$p )")" ]; then
			echo "$p"
			return 0
		fi
	done
	die "no free port"
}

# wait_listen PORT: until something listens on 127.0.0.1:PORT (20 s).
wait_listen() {
	for _ in $(seq 200); do
		[ -n "$(ss -Hltn "sport = :$1")" ] && return 0
		sleep 0.1
	done
	die "nothing listens on port $1"
}

# sink_field NAME prints tlssink's counter NAME (sess, mesg, plain, short):
# its stdout ends in "\rsess=A mesg=B plain=C short=D".
sink_field() {
	tail -c 120 "$T/sink.out" 2>/dev/null | awk -v RS='\r' -v k="$1=" '$0 ~ k { sub(".*" k, ""); n = $1 } END { print n + 0 }'
}
sink_count() { sink_field mesg; }

# tree_cpu_ticks PID: CPU time (user+system, clock ticks) of PID and all its
# descendants alive now, plus what PID's reaped children used (cutime and
# cstime). Postfix runs as many short- and long-lived processes under one
# master; postern is one process.
tree_cpu_ticks() {
	local root=$1 pids
	pids=$(ps -e -o pid=,ppid= | awk -v r="$root" '
		{ kids[$2] = kids[$2] " " $1 }
		END {
			todo[1] = r; n = 1
			while (n > 0) {
				p = todo[n--]; if (p != r) print p
				m = split(kids[p], k, " ")
				for (i = 1; i <= m; i++) todo[++n] = k[i]
			}
		}')
	{
		cat "/proc/$root/stat"
		for p in $pids; do cat "/proc/$p/stat" 2>/dev/null || true; done
	} | awk '{
		sub(/^.*\) /, "")          # drop "pid (comm) "; field 1 is now state
		t += $12 + $13             # utime stime
		if (NR == 1) t += $14 + $15 # cutime cstime of the root
	} END { print t + 0 }'
}

pf_master_pid() {
	local f="$T/pf/spool/pid/master.pid"
	[ -r "$f" ] && tr -d ' \n' <"$f"
	return 0
}

# queued MTA: messages still in its queue.
queued() {
	case $1 in
	postern) find "$T/pn/queue/meta" -type f 2>/dev/null | wc -l ;;
	postfix) find "$T/pf/spool/maildrop" "$T/pf/spool/incoming" "$T/pf/spool/active" \
		"$T/pf/spool/deferred" "$T/pf/spool/hold" -type f 2>/dev/null | wc -l ;;
	esac
}

now_ns() { date +%s%N; }

# --- the receiving MX: tlssink ---------------------------------------------
#
# postern's tls method never lets a copy cross a hop in plaintext, the relay
# hop included (SPEC §8), so the receiver must offer STARTTLS, which
# smtp-sink cannot. tlssink is a small go-smtp receiver built here: it
# offers STARTTLS (self-signed certificate, so level encrypt), discards
# each message after reading it, and writes smtp-sink-style counters to
# stdout ("\rsess=A mesg=B plain=C short=D") and the TLS parameters of each
# message to tls.log. A second listener answers postern's relay-mode STARTTLS
# probe of the recipient domain's MX (found through tlssink's loopback DNS
# server) and refuses mail; the probe result is cached for an hour, so it
# only happens during the warm-up.
mkdir -p "$T/tlssink"
cat >"$T/tlssink/main.go" <<'EOF_GO'
// Command tlssink is the receiving MX of postfix_compare.sh: an SMTP
// receiver with STARTTLS that counts and discards messages, a probe target
// that offers STARTTLS and refuses mail, and a loopback DNS server that
// points the recipient domain's MX at the probe target.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern-mail/postern/gateway/dnsr"
	"github.com/postern-mail/postern/gateway/dnsr/dnstest"
)

func main() {
	domain := flag.String("domain", "", "recipient domain whose MX is the probe target")
	tlsLog := flag.String("tlslog", "", "file for one line of TLS parameters per message")
	minSize := flag.Int64("min", 0, "messages shorter than this many bytes are counted as short")
	flag.Parse()
	if *domain == "" || *tlsLog == "" {
		log.Fatal("tlssink: -domain and -tlslog are required")
	}
	tl, err := os.Create(*tlsLog)
	if err != nil {
		log.Fatalf("tlssink: %v", err)
	}
	defer tl.Close()

	mx := "mx." + *domain
	dns, err := dnstest.Start()
	if err != nil {
		log.Fatalf("tlssink: dns: %v", err)
	}
	defer dns.Close()
	dns.SetMX(*domain, dnsr.MX{Host: mx, Pref: 10})
	dns.SetA(mx, "127.0.0.1")

	cert, err := selfSigned(mx)
	if err != nil {
		log.Fatalf("tlssink: certificate: %v", err)
	}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}}
	sk := &sink{tlsLog: tl, min: *minSize}
	pr := &probe{}
	var ports []int
	var servers []*smtp.Server
	for _, be := range []smtp.Backend{sk, pr} {
		s := smtp.NewServer(be)
		s.Domain = mx
		s.TLSConfig = tlsConf
		s.MaxMessageBytes = 64 << 20
		s.ReadTimeout, s.WriteTimeout = time.Minute, time.Minute
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			log.Fatalf("tlssink: listen: %v", err)
		}
		go func() { _ = s.Serve(ln) }()
		servers = append(servers, s)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	fmt.Printf("dns=%s sink_port=%d probe_port=%d\n", dns.Addr, ports[0], ports[1])

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	for _, s := range servers {
		s.Close()
	}
	log.Printf("tlssink: %d probe connections", pr.conns.Load())
}

// sink accepts every message and counts it.
type sink struct {
	tlsLog *os.File
	min    int64

	mu                      sync.Mutex
	sess, mesg, plain, short int64
}

func (k *sink) NewSession(c *smtp.Conn) (smtp.Session, error) {
	// go-smtp starts a new session after STARTTLS: count connections,
	// not sessions.
	if _, tlsOn := c.TLSConnectionState(); !tlsOn {
		k.mu.Lock()
		k.sess++
		k.mu.Unlock()
	}
	return &sinkSession{k: k, c: c}, nil
}

type sinkSession struct {
	k *sink
	c *smtp.Conn
}

func (s *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *sinkSession) Reset()                               {}
func (s *sinkSession) Logout() error                        { return nil }

func (s *sinkSession) Data(r io.Reader) error {
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return fmt.Errorf("read message: %w", err)
	}
	st, tlsOn := s.c.TLSConnectionState()
	k := s.k
	k.mu.Lock()
	defer k.mu.Unlock()
	k.mesg++
	if n < k.min {
		k.short++
	}
	if tlsOn {
		fmt.Fprintf(k.tlsLog, "%s %s %s resumed=%v\n", tls.VersionName(st.Version),
			tls.CipherSuiteName(st.CipherSuite), st.CurveID, st.DidResume)
	} else {
		k.plain++
		fmt.Fprintln(k.tlsLog, "plaintext")
	}
	fmt.Printf("\rsess=%d mesg=%d plain=%d short=%d", k.sess, k.mesg, k.plain, k.short)
	return nil
}

// probe offers STARTTLS and refuses mail.
type probe struct{ conns atomic.Int64 }

func (p *probe) NewSession(*smtp.Conn) (smtp.Session, error) {
	log.Printf("tlssink: probe connection %d", p.conns.Add(1))
	return refuse{}, nil
}

type refuse struct{}

var errProbeOnly = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "probe target only"}

func (refuse) Mail(string, *smtp.MailOptions) error { return errProbeOnly }
func (refuse) Rcpt(string, *smtp.RcptOptions) error { return errProbeOnly }
func (refuse) Data(io.Reader) error                 { return errors.New("probe target only") }
func (refuse) Reset()                               {}
func (refuse) Logout() error                        { return nil }

func selfSigned(host string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
EOF_GO
log "building postern and tlssink"
(cd "$repo" && go build -o "$T/postern" ./cmd/postern && go build -o "$T/tlssink/tlssink" "$T/tlssink/main.go")
"$T/tlssink/tlssink" -domain "$RCPT_DOMAIN" -tlslog "$T/tls.log" -min "$SIZE" >"$T/sink.out" 2>"$T/sink.log" &
sink_pid=$!
for _ in $(seq 100); do
	grep -q probe_port= "$T/sink.out" 2>/dev/null && break
	sleep 0.1
done
read -r dns_kv sink_kv probe_kv <"$T/sink.out" || die "tlssink did not start: $(cat "$T/sink.log")"
stub_dns=${dns_kv#dns=}
sink_port=${sink_kv#sink_port=}
probe_port=${probe_kv#probe_port=}
wait_listen "$sink_port"

# --- postern ---------------------------------------------------------------

pn_port=$(free_port)
mkdir -p "$T/pn"
cat >"$T/pn/policy.yaml" <<EOF
# Every recipient: the tls method at level encrypt (any STARTTLS). In relay
# mode postern checks the recipient's MX with a cached STARTTLS probe and
# sends the copy to the relay over STARTTLS.
methods: [tls]
tls:
  level: encrypt
EOF
cat >"$T/pn/postern.yaml" <<EOF
hostname: postern.bench.localhost
smtp:
  listen: "127.0.0.1:$pn_port"
  require_tls: false
  allowed_networks: [127.0.0.0/8]
queue:
  dir: queue
delivery:
  mode: relay
  relay: "127.0.0.1:$sink_port"
  relay_tls: opportunistic  # raised to encrypt for copies whose plan needs TLS
  port: $probe_port
  dns: "$stub_dns"
  mta_sts: false
  dane: false
policy: policy.yaml
keys:
  wkd: false
  keyserver: ""
storage:
  driver: sqlite
  dsn: postern.db
audit:
  path: audit.jsonl
admin:
  listen: ""
log:
  level: info
  format: json
EOF
"$T/postern" check -config "$T/pn/postern.yaml" >&2 || die "postern check failed"
"$T/postern" serve -config "$T/pn/postern.yaml" >"$T/pn/postern.log" 2>&1 &
postern_pid=$!
wait_listen "$pn_port"

# --- Postfix: a throwaway instance ------------------------------------------

pf_port=$(free_port)
mkdir -p "$T/pf/etc" "$T/pf/spool" "$T/pf/data"
chown postfix "$T/pf/data"
cat >"$T/pf/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $T/pf/spool
data_directory = $T/pf/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.localhost
mydomain = bench.localhost
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$sink_port
# Debian's TLS client settings (main.cf.tls), at level encrypt: STARTTLS
# required, certificate not checked, as postern's tls.level encrypt.
smtp_tls_security_level = encrypt
smtp_tls_CApath = /etc/ssl/certs
smtp_tls_session_cache_database = btree:\${data_directory}/smtp_scache
smtpd_tls_security_level = none
smtp_dns_support_level = disabled
alias_maps =
alias_database =
biff = no
maillog_file_prefixes = $T/pf
maillog_file = $T/pf/maillog
EOF
# Debian's master.cf with the smtpd listener moved to the test port and
# without chroot (the temporary queue has no copy of /etc and /lib).
cat >"$T/pf/etc/master.cf" <<EOF
127.0.0.1:$pf_port inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
local      unix  - n n -  - local
virtual    unix  - n n -  - virtual
lmtp       unix  - - n -  - lmtp
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
EOF
/usr/sbin/postfix -c "$T/pf/etc" check >"$T/pf/check.log" 2>&1 || die "postfix check failed: $(cat "$T/pf/check.log" "$T/pf/maillog" 2>/dev/null)"
pf_started=1
/usr/sbin/postfix -c "$T/pf/etc" start >"$T/pf/start.log" 2>&1 || die "postfix start failed: $(cat "$T/pf/start.log" "$T/pf/maillog" 2>/dev/null)"
wait_listen "$pf_port"
pf_pid=$(pf_master_pid)
[ -n "$pf_pid" ] || die "no Postfix master pid"

# --- runs ------------------------------------------------------------------

tck=$(getconf CLK_TCK)
keep="; logs in $T (KEEP=1 keeps them)"
results=()
declare -A seen # label: connections and TLS seen at the sink, first run
seen_lines=()

# send MTA PORT SESSIONS COUNT LOGFILE: smtp-source in the background.
send() {
	timeout "$RUN_LIMIT" smtp-source -4 -d -M gw.bench.localhost -f sender@example.org \
		-t "rcpt@$RCPT_DOMAIN" -S benchmark -l "$SIZE" -m "$4" -s "$3" "127.0.0.1:$2" >"$5" 2>&1 &
	src_pid=$!
}

# run LABEL MTA PORT ROOTPID SESSIONS COUNT [warmup]: one timed run; appends
# a row to results unless it is the warm-up.
run() {
	local label=$1 mta=$2 port=$3 root=$4 sessions=$5 n=$6 warm=${7:-}
	local base cpu0 cpu1 t0 t1 deadline c rc=0 got left sess0 tls0
	base=$(sink_count)
	sess0=$(sink_field sess)
	tls0=$(wc -l <"$T/tls.log")
	cpu0=$(tree_cpu_ticks "$root")
	t0=$(now_ns)
	deadline=$((t0 + RUN_LIMIT * 1000000000))
	send "$mta" "$port" "$sessions" "$n" "$T/source.$mta.$sessions.log"
	while :; do
		c=$(sink_count)
		[ $((c - base)) -ge "$n" ] && break
		if [ -n "$src_pid" ] && ! kill -0 "$src_pid" 2>/dev/null; then
			wait "$src_pid" || rc=$?
			src_pid=""
			if [ "$rc" -ne 0 ]; then
				die "$mta: smtp-source failed (exit $rc): $(tail -c 300 "$T/source.$mta.$sessions.log")$keep"
			fi
		fi
		if [ "$(now_ns)" -gt "$deadline" ]; then
			die "$mta, $sessions sessions: sink got $((c - base)) of $n in ${RUN_LIMIT}s$keep"
		fi
		sleep 0.02
	done
	t1=$(now_ns)
	if [ -n "$src_pid" ]; then
		wait "$src_pid" || rc=$?
		src_pid=""
		[ "$rc" -eq 0 ] || die "$mta: smtp-source exit $rc$keep"
	fi
	# CPU is read once the MTA has also finished its bookkeeping (queue
	# files removed, audit written): at most 30 s more.
	for _ in $(seq 300); do
		left=$(queued "$mta")
		[ "$left" -eq 0 ] && break
		sleep 0.1
	done
	[ "$left" -eq 0 ] || die "$mta: $left messages still queued$keep"
	cpu1=$(tree_cpu_ticks "$root")
	got=$(($(sink_count) - base))
	[ "$got" -eq "$n" ] || die "$mta: sink got $got messages, want $n$keep"
	[ -n "$warm" ] && return 0
	if [ -z "${seen[$label]:-}" ]; then
		seen[$label]="$label: $got messages over $(($(sink_field sess) - sess0)) connections; at the sink: $(tail -n +$((tls0 + 1)) "$T/tls.log" |
			sort | uniq -c | sort -rn | awk '{ c = $1; $1 = ""; printf "%s%d ×%s", (NR > 1 ? ", " : ""), c, $0 }')"
		seen_lines+=("${seen[$label]}")
		log "${seen[$label]}"
	fi
	printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$sessions" "$n" $((t1 - t0)) $((cpu1 - cpu0)) >>"$T/rows"
	results+=("$(awk -v m="$label" -v s="$sessions" -v n="$n" -v dt=$((t1 - t0)) -v c=$((cpu1 - cpu0)) -v k="$tck" \
		'BEGIN { sec = dt / 1e9; printf "| %s | %d | %d | %.2f | %.0f | %.2f |", m, s, n, sec, n / sec, c / k }')")
	log "${results[-1]}"
}

log "warm-up: $WARMUP messages through each MTA"
run postern postern "$pn_port" "$postern_pid" 2 "$WARMUP" warm
run postfix postfix "$pf_port" "$pf_pid" 2 "$WARMUP" warm
probes_warm=$(grep -c 'probe connection' "$T/sink.log" || true)

for _ in $(seq "$REPEAT"); do
	for s in $SESSIONS; do
		run postern postern "$pn_port" "$postern_pid" "$s" "$N"
		run postfix postfix "$pf_port" "$pf_pid" "$s" "$N"
	done
done

# Postfix resumes TLS sessions with the receiver (Debian's
# smtp_tls_session_cache_database); postern does a full handshake for every
# delivery. NOCACHE=1 (the default) adds runs of Postfix without the cache,
# to show how much of the difference that is.
if [ "${NOCACHE:-1}" = 1 ]; then
	/usr/sbin/postconf -c "$T/pf/etc" -e 'smtp_tls_session_cache_database='
	/usr/sbin/postfix -c "$T/pf/etc" reload >>"$T/pf/start.log" 2>&1
	sleep 2 # idle smtp processes exit; new ones read the new setting
	run postfix postfix "$pf_port" "$pf_pid" 2 "$WARMUP" warm
	for _ in $(seq "$REPEAT"); do
		for s in $SESSIONS; do
			run "postfix, no TLS session cache" postfix "$pf_port" "$pf_pid" "$s" "$N"
		done
	done
fi
probes=$(grep -c 'probe connection' "$T/sink.log" || true)

# postern's audit chain must verify and hold a decision and a delivery
# record per message.
total=$((WARMUP + REPEAT * N * $(wc -w <<<"$SESSIONS")))  # through postern
"$T/postern" audit verify -config "$T/pn/postern.yaml" >"$T/pn/verify.log" 2>&1 || {
	log "postern audit verify failed: $(cat "$T/pn/verify.log")"
	failed=1
}
records=$(wc -l <"$T/pn/audit.jsonl")
[ "$records" -ge $((2 * total)) ] || {
	log "postern audit log holds $records records, want at least $((2 * total))"
	failed=1
}

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
fs=$(df -T "$T" | awk 'NR == 2 { print $2 }')
pf_version=$(/usr/sbin/postconf -c "$T/pf/etc" -h mail_version)
echo
echo "$(date -u +%Y-%m-%d), $(nproc) CPUs ($cpu_model), queue on $fs, Postfix $pf_version, postern $("$T/postern" version 2>/dev/null || echo '?'), $SIZE-byte payload"
echo
echo "| MTA | sessions | messages | seconds | msgs/s | CPU seconds |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
echo
if [ "$REPEAT" -gt 1 ]; then
	echo "Median of $REPEAT runs:"
	echo
	echo "| MTA | sessions | messages | seconds | msgs/s | CPU seconds |"
	echo "|---|---|---|---|---|---|"
	awk -F'\t' -v k="$tck" '
		function median(s,    a, m, i, j, t) {
			m = split(s, a, " ")
			for (i = 2; i <= m; i++)
				for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
			return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
		}
		{
			g = $1 "\t" $2 "\t" $3
			if (!(g in dt)) order[++n] = g
			dt[g] = dt[g] " " $4; cpu[g] = cpu[g] " " $5
		}
		END {
			for (i = 1; i <= n; i++) {
				split(order[i], f, "\t")
				sec = median(dt[order[i]]) / 1e9
				printf "| %s | %d | %d | %.2f | %.0f | %.2f |\n", f[1], f[2], f[3], sec, f[3] / sec, median(cpu[order[i]]) / k
			}
		}' "$T/rows"
	echo
fi
echo "postern audit log: $records records; audit verify: $(sed "s|$T/pn/||" "$T/pn/verify.log")"
echo "postern STARTTLS probes of the recipient MX: $probes_warm in the warm-up, $((probes - probes_warm)) in the timed runs"
printf '%s\n' "${seen_lines[@]}"
plain=$(sink_field plain)
short=$(sink_field short)
echo "sink: $(sink_field mesg) messages in all, $plain without TLS, $short shorter than $SIZE bytes"
if [ "$plain" -ne 0 ] || [ "$short" -ne 0 ]; then failed=1; fi
[ "$failed" -eq 0 ] || die "checks failed$keep"
