# moa serve in a small image: the API-only binary (OpenAI-compatible providers, Anthropic,
# Bedrock; no local models) on distroless's glibc base, as an unprivileged user.
#
#   docker build -t moa .
#   docker run --rm -p 8787:8787 -e MOA_SERVER_API_KEY=... -e TOGETHER_API_KEY=... moa
#
# FEATURES picks the cargo features (see the README's "Install"); `local` needs Python's pip at
# run time to fetch a model, which this base does not have: mount models into MOA_MODELS_DIR.
ARG RUST_VERSION=1.94.1

FROM rust:${RUST_VERSION}-bookworm AS build
ARG FEATURES=bedrock
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p moa-cli --no-default-features --features "${FEATURES}" \
    && cp target/release/moa /moa

# The binary needs only libc, libm and libgcc_s (TLS is rustls with bundled roots).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /moa /usr/local/bin/moa
EXPOSE 8787
ENTRYPOINT ["/usr/local/bin/moa"]
# Bound to every interface, the server refuses to start without a key: pass MOA_SERVER_API_KEY.
CMD ["serve", "--host", "0.0.0.0", "--port", "8787"]
