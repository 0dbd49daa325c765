"""A real S3 API server for tests (moto's threaded server on 127.0.0.1), with the
fault-injecting proxy of :mod:`tests.faultproxy` in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.faultproxy import Faults, fault_proxy


@dataclass
class S3Server:
    """A running moto server and its fault proxy."""

    endpoint: str  # the proxy's URL: clients go through it
    faults: Faults

    def storage_options(self) -> dict[str, Any]:
        """fsspec options for s3fs that reach this server (no retries inside botocore,
        so an injected error reaches k8s_executor's own retry)."""
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}},
            "skip_instance_cache": True,
        }


@contextmanager
def s3_server(buckets: tuple[str, ...] = ()) -> Iterator[S3Server]:
    """Start moto + proxy on loopback, with ``buckets`` created; stop both (no thread, no
    socket left)."""
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        with fault_proxy(moto.get_host_and_port()) as (url, faults):
            if buckets:
                import boto3

                s3 = boto3.client(
                    "s3",
                    endpoint_url=url,
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",
                    region_name="us-east-1",
                )
                for name in buckets:
                    s3.create_bucket(Bucket=name)
            yield S3Server(url, faults)
    finally:
        moto.stop()
