# syntax=docker/dockerfile:1
#
# The milagro image: one static binary on distroless, running as an
# unprivileged user, no shell.
#
#   docker build -t registry.example.com/milagro:0.1.0 .
#   docker run --rm registry.example.com/milagro:0.1.0 version
#
# Pin both base images by digest in production (FROM image:tag@sha256:...).

FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so that editing the source does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# CGO_ENABLED=0: a static binary that runs on distroless/static (no libc).
# -trimpath keeps build paths out of the binary; -s -w drops symbol tables.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/milagro ./cmd/milagro \
 && mkdir -p /out/state

# distroless/static:nonroot: CA certificates (for the D-TAs' HTTPS), tzdata,
# /etc/passwd with the user nonroot (65532), and nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/milagro /usr/local/bin/milagro
# /var/lib/milagro owned by the runtime user: a Docker named volume mounted
# there starts with this owner, so a D-TA can create its folder in it.
COPY --from=build --chown=65532:65532 /out/state /var/lib/milagro
USER 65532:65532
# 8443: server sidecar and D-TA; 9901: status and metrics.
EXPOSE 8443 9901
ENTRYPOINT ["milagro"]
CMD ["help"]
