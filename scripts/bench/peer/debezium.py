"""debezium.py — Kafka Connect standalone running the Debezium PostgreSQL
connector with the outbox event router: the peer that scripts/bench/run.sh
measures beside pgoutbox (used by bench.py and compat.py, not run alone).

One Connect worker per Debezium instance, started as bin/connect-standalone.sh
would start it (the same JVM options: -Xms256M -Xmx2G, G1 with 20 ms pauses),
with every jar of scripts/bench/peer/resolve.sh on the class path, its REST
listener on a free loopback port, its offsets in its own file. The connector
reads its own slot (pgoutput) through its own publication, both created by
the caller, from 127.0.0.1 only; the outbox event router routes by
aggregatetype to outbox.event.<aggregatetype>, keys by aggregateid, puts the
id column in header `id` (the router's default) and, like pgoutbox, the type
column in header `type`.

Configurations (CONFIGS):
  tuned     for latency: poll.interval.ms=10 (the connector's queue is
            polled every 10 ms instead of 500), producer linger.ms=0, acks=all
  defaults  Debezium's and Kafka Connect's defaults
Converters: string (StringConverter for key and value: the setup whose
output pgoutbox reproduces byte for byte) or json (JsonConverter, schemas
off).
"""
import os
import signal
import subprocess
import time

# Connector settings on top of the common ones, per configuration.
CONFIGS = {
    "tuned": {
        "connector": {"poll.interval.ms": "10"},
        "worker": {"producer.linger.ms": "0", "producer.acks": "all"},
    },
    "defaults": {"connector": {}, "worker": {}},
}

CONVERTERS = {
    "string": {
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.storage.StringConverter",
    },
    "json": {
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "false",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "false",
    },
}

# bin/kafka-run-class.sh's defaults, with connect-standalone.sh's heap.
JVM_OPTS = ["-Xms256M", "-Xmx2G", "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:MaxInlineLevel=15", "-Djava.awt.headless=true"]


def write_props(path, props):
    with open(path, "w") as f:
        for k, v in props.items():
            f.write("%s=%s\n" % (k, v.replace("\\", "\\\\").replace("\n", "\\n")))


def jar_version(libs, prefix):
    """The version in the name of the first jar PREFIX-<version>.jar in libs."""
    for fn in sorted(os.listdir(libs)):
        if fn.startswith(prefix + "-") and fn.endswith(".jar"):
            rest = fn[len(prefix) + 1:-4]
            if rest[:1].isdigit():
                return rest
    return None


class Connect:
    """One Kafka Connect standalone worker with one Debezium connector.

    pg: dict with host, port, user, dbname (and password, if any). The
    worker's files and log go to workdir (created)."""

    def __init__(self, libs, workdir, pg, brokers, slot, publication, name,
                 config="tuned", converter="string", connector_extra=None, worker_extra=None,
                 rest_port=None):
        if config not in CONFIGS:
            raise ValueError("unknown Debezium configuration %r" % config)
        if converter not in CONVERTERS:
            raise ValueError("unknown converter %r" % converter)
        self.libs, self.workdir, self.name = libs, workdir, name
        self.config, self.converter = config, converter
        os.makedirs(workdir, exist_ok=True)
        self.worker_props = {
            "bootstrap.servers": brokers,
            "offset.storage.file.filename": os.path.join(workdir, "offsets"),
            "listeners": "http://127.0.0.1:%d" % (rest_port or 0),
            "plugin.discovery": "only_scan",
        }
        self.worker_props.update(CONVERTERS[converter])
        self.worker_props.update(CONFIGS[config]["worker"])
        self.worker_props.update(worker_extra or {})
        self.connector_props = {
            "name": name,
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "tasks.max": "1",
            "plugin.name": "pgoutput",
            "database.hostname": pg["host"],
            "database.port": str(pg["port"]),
            "database.user": pg["user"],
            # the bench cluster trusts loopback; Debezium insists on a value
            "database.password": pg.get("password") or "unused",
            "database.dbname": pg["dbname"],
            "topic.prefix": name,
            "slot.name": slot,
            "publication.name": publication,
            "publication.autocreate.mode": "disabled",
            "table.include.list": "public.outbox",
            "snapshot.mode": "no_data",
            "tombstones.on.delete": "false",
            "transforms": "outbox",
            "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
            "transforms.outbox.table.fields.additional.placement": "type:header:type",
        }
        self.connector_props.update(CONFIGS[config]["connector"])
        self.connector_props.update(connector_extra or {})
        self.proc = None
        self.t_start = None
        self.log_path = os.path.join(workdir, "connect.log")

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self):
        """Start the JVM; returns at once (self.t_start: time.monotonic() just before)."""
        wp = os.path.join(self.workdir, "worker.properties")
        cp = os.path.join(self.workdir, "connector.properties")
        lp = os.path.join(self.workdir, "log4j.properties")
        write_props(wp, self.worker_props)
        write_props(cp, self.connector_props)
        with open(lp, "w") as f:
            f.write("log4j.rootLogger=INFO, file\n"
                    "log4j.appender.file=org.apache.log4j.FileAppender\n"
                    "log4j.appender.file.File=%s\n"
                    "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
                    "log4j.appender.file.layout.ConversionPattern=[%%d] %%p %%m (%%c)%%n\n"
                    % self.log_path)
        cmd = (["java"] + JVM_OPTS + ["-Dlog4j.configuration=file:" + lp,
                                      "-cp", os.path.join(self.libs, "*"),
                                      "org.apache.kafka.connect.cli.ConnectStandalone", wp, cp])
        self.stderr = open(os.path.join(self.workdir, "connect.stderr"), "w")
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.stderr, stderr=subprocess.STDOUT,
                                     cwd=self.workdir)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=60):
        """SIGTERM (a clean Connect shutdown), SIGKILL after timeout s.
        Returns (exit code, CPU s, max RSS kB) of the JVM from wait4()."""
        if self.proc is None:
            return None, None, None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                pid, status, ru = os.wait4(self.proc.pid, 0)
                break
            time.sleep(0.05)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.stderr.close()
        return self.proc.returncode, ru.ru_utime + ru.ru_stime, ru.ru_maxrss

    def log_tail(self, n=30):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""
