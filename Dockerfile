# syntax=docker/dockerfile:1
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/postern ./cmd/postern

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/postern /usr/local/bin/postern
COPY configs/ /etc/postern/
VOLUME ["/var/lib/postern"]
EXPOSE 2525 9090
USER nonroot:nonroot
HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/local/bin/postern", "healthcheck", "-url", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/postern"]
CMD ["serve", "-config", "/etc/postern/dev.yaml"]
