"""A plain collector, as the scripts in use for this API are written: the
yardstick of the `compare` benchmark (benches/bridge.rs).

Sequential: for each pair, one window, one page at a time (requests), every
event re-serialized with orjson and published on `<prefix>.<service>.<event>`;
no validation, no ids, no dedup, no envelope, no checkpoints. NATS publishes
are pipelined, their acks awaited once a page; Kafka's producer batches
(linger.ms 5, as the bridge's) and is flushed once a page.

    python3 benches/plain_collector.py --api URL --token T --start ISO --end ISO \
        --pairs exchange:dlp,... --sink jsonl:PATH | nats:URL:STREAM | kafka:BROKERS \
        --prefix cas

Prints one line: `events N cpu SECONDS`: this process's user + system CPU
from the moment it is connected (imports and connections not counted).
"""

import argparse
import asyncio
import resource
import sys

import orjson
import requests

CPU0 = [0.0]


def cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def started():
    """Connected and ready: the CPU counted from here on."""
    CPU0[0] = cpu()


def pages(session, api, token, service, event, start, end):
    url = f"{api}/v1/siem/security_events"
    params = {"service": service, "event": event, "start": start, "end": end, "limit": 500}
    headers = {"Authorization": f"Bearer {token}"}
    while url:
        r = session.get(url, params=params, headers=headers, timeout=30)
        r.raise_for_status()
        body = orjson.loads(r.content)
        yield body.get("security_events") or []
        url = body.get("next_link") or None
        params = None


def collect_jsonl(args, pairs, path):
    n = 0
    started()
    with requests.Session() as s, open(path, "ab") as out:
        for service, event in pairs:
            for events in pages(s, args.api, args.token, service, event, args.start, args.end):
                for e in events:
                    out.write(orjson.dumps(e) + b"\n")
                    n += 1
    return n


def collect_kafka(args, pairs, brokers):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    n = 0
    started()
    with requests.Session() as s:
        for service, event in pairs:
            topic = f"{args.prefix}.{service}.{event}"
            for events in pages(s, args.api, args.token, service, event, args.start, args.end):
                for e in events:
                    p.produce(topic, orjson.dumps(e))
                    n += 1
                p.flush()
    return n


async def collect_nats(args, pairs, url, stream):
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{args.prefix}.>"])
    n = 0
    started()
    with requests.Session() as s:
        for service, event in pairs:
            subject = f"{args.prefix}.{service}.{event}"
            for events in pages(s, args.api, args.token, service, event, args.start, args.end):
                # Pipelined: every publish of the page sent, then their acks.
                for e in events:
                    await js.publish_async(subject, orjson.dumps(e))
                    n += 1
                await js.publish_async_completed()
    spent = cpu() - CPU0[0]
    await nc.close()
    return n, spent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--start", required=True)
    ap.add_argument("--end", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--sink", required=True)
    ap.add_argument("--prefix", default="cas")
    args = ap.parse_args()
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    kind, _, rest = args.sink.partition(":")
    if kind == "jsonl":
        n = collect_jsonl(args, pairs, rest)
        spent = cpu() - CPU0[0]
    elif kind == "kafka":
        n = collect_kafka(args, pairs, rest)
        spent = cpu() - CPU0[0]
    elif kind == "nats":
        url, _, stream = rest.rpartition(":")
        n, spent = asyncio.run(collect_nats(args, pairs, url, stream))
    else:
        sys.exit(f"unknown sink {args.sink}")
    print(f"events {n} cpu {spent:.3f}")


if __name__ == "__main__":
    main()
