# syntax=docker/dockerfile:1
#
# postern container image: a static binary on distroless, running as uid
# 65532 (nonroot), with one volume each for the queue, storage and the audit
# log. Build and try:
#
#   docker build --build-arg VERSION=$(git describe --always) -t postern .
#   docker run -p 25:2525 -p 127.0.0.1:9090:9090 \
#     -v postern-spool:/var/spool/postern -v postern-lib:/var/lib/postern \
#     -v postern-log:/var/log/postern postern
#
# The default configuration is configs/docker.yaml (a trial: private
# networks in, .eml files out); mount your own over /etc/postern for real use.
# deploy/docker-compose.yaml runs it with PostgreSQL and Prometheus.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/postern ./cmd/postern
# Refuse to build an image whose default configuration does not validate.
RUN mkdir -p /out/etc \
 && cp configs/docker.yaml /out/etc/postern.yaml \
 && cp configs/policy.yaml /out/etc/policy.yaml \
 && /out/postern check -config /out/etc/postern.yaml
# Volume mount points, owned by the runtime user so that fresh named volumes
# inherit that ownership.
RUN mkdir -p /out/state/spool /out/state/lib /out/state/log

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/postern /usr/local/bin/postern
COPY --from=build /out/etc/ /etc/postern/
COPY --from=build --chown=65532:65532 /out/state/spool /var/spool/postern
COPY --from=build --chown=65532:65532 /out/state/lib /var/lib/postern
COPY --from=build --chown=65532:65532 /out/state/log /var/log/postern
# queue, storage, audit log: separate volumes so that each can have its own
# disk and backup schedule (docs/operations.md). Mount each one; do not mount
# a parent folder over them.
VOLUME ["/var/spool/postern", "/var/lib/postern", "/var/log/postern"]
# 2525 SMTP (publish as 25), 9090 admin (/metrics /healthz /readyz).
EXPOSE 2525 9090
USER 65532:65532
# The image has no shell or curl: postern checks its own /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/postern", "healthcheck", "-url", "http://127.0.0.1:9090/healthz"]
# SIGTERM drains (stop accepting, finish transactions, keep the queue
# consistent) for up to 50s: stop with `docker stop -t 60` (compose:
# stop_grace_period) rather than Docker's default 10s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/postern"]
CMD ["serve", "-config", "/etc/postern/postern.yaml"]
