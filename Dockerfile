# Build stage: compile the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
# A workspace member: cargo reads its manifest even to build the broker.
COPY tools ./tools
RUN cargo build --release --bin broker

# Run stage: a slim Debian with just the binary, as a non-root user.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/broker broker \
    && mkdir -p /var/lib/broker /etc/broker \
    && chown broker /var/lib/broker
COPY --from=build /src/target/release/broker /usr/local/bin/broker
COPY broker.toml /etc/broker/broker.toml
USER broker
WORKDIR /var/lib/broker
# Configuration: mount a file over /etc/broker/broker.toml, or set
# BROKER__SECTION__KEY environment variables.
ENV BROKER__STORAGE__DATA_DIR=/var/lib/broker/data
VOLUME ["/var/lib/broker"]
# AMQP, management HTTP API, Prometheus metrics.
EXPOSE 5672 15672 15692
ENTRYPOINT ["/usr/local/bin/broker", "--config", "/etc/broker/broker.toml"]
