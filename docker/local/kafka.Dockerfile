# A stand-in for apache/kafka where no image registry is reachable: the same broker (the jars
# `explore infra` resolves through Maven, copied into the build context by docker/local/stack_test.py)
# on Debian's OpenJDK 17, configured like the official image: every KAFKA_X_Y variable is the
# setting x.y, CLUSTER_ID formats the storage on first start.

ARG DEBIAN_IMAGE=localhost/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /opt/kafka/config /var/lib/kafka/data
COPY libs /opt/kafka/libs
COPY log4j2.properties /opt/kafka/config/log4j2.properties
COPY --chmod=0755 kafka-entrypoint.sh /opt/kafka/entrypoint.sh
EXPOSE 9092 9093 9094
ENTRYPOINT ["/opt/kafka/entrypoint.sh"]
