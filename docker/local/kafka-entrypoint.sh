#!/bin/sh
# The official apache/kafka image's convention: KAFKA_NODE_ID=1 -> node.id=1, and so on.
set -eu
props=/opt/kafka/config/server.properties
env | grep '^KAFKA_' | grep -v '^KAFKA_HEAP_OPTS=' | while IFS='=' read -r name value; do
    printf '%s=%s\n' "$(printf '%s' "${name#KAFKA_}" | tr 'A-Z_' 'a-z.')" "$value"
done > "$props"
run() { java ${KAFKA_HEAP_OPTS:--Xmx512m} -Djava.awt.headless=true \
    -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -cp '/opt/kafka/libs/*' "$@"; }
run kafka.tools.StorageTool format --ignore-formatted -t "${CLUSTER_ID:?set CLUSTER_ID}" -c "$props"
exec java ${KAFKA_HEAP_OPTS:--Xmx512m} -Djava.awt.headless=true \
    -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -cp '/opt/kafka/libs/*' kafka.Kafka "$props"
