"""The Redis adapter's reading of error replies: a Redis that runs no write right now (the command was
not run, nothing was written) is :class:`StoreRefused`; any other error reply is a plain
:class:`StoreError` (a bug: answered ``internal``)."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    CrossSlotTransactionError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from server.store.ports import StoreError, StoreRefused, StoreUnavailable
from server.store.redis_store import store_error, translated

REFUSED_REPLIES = [
    "NOREPLICAS Not enough good replicas to write. script: 3a00e9bb, on @user_script:12.",
    "READONLY You can't write against a read only replica.",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "LOADING Redis is loading the dataset in memory",
    "CLUSTERDOWN The cluster is down",
    "TRYAGAIN Multiple keys request during rehashing of slot",
]


@pytest.mark.parametrize("reply", REFUSED_REPLIES, ids=[reply.split()[0] for reply in REFUSED_REPLIES])
def test_a_refusal_read_by_the_lean_client_is_refused_with_its_message(reply: str) -> None:
    error = store_error(ResponseError(reply))
    assert type(error) is StoreRefused and str(error) == reply


@pytest.mark.parametrize(("cls", "word"), [(ReadOnlyError, "READONLY"), (OutOfMemoryError, "OOM"),
                                           (MasterDownError, "MASTERDOWN"), (TryAgainError, "TRYAGAIN"),
                                           (ClusterDownError, "CLUSTERDOWN")])
def test_a_refusal_redis_py_made_a_class_of_is_refused_and_keeps_its_word(cls: type[ResponseError],
                                                                         word: str) -> None:
    error = store_error(cls("the message without its word"))  # redis-py strips the word
    assert type(error) is StoreRefused and str(error) == f"{word} the message without its word"


@pytest.mark.parametrize("reply", ["ERR unknown command 'FOO'",
                                   "WRONGTYPE Operation against a key holding the wrong kind of value",
                                   "BUSYGROUP Consumer Group name already exists",
                                   "NOSCRIPT No matching script."])
def test_any_other_error_reply_is_a_plain_store_error(reply: str) -> None:
    error = store_error(ResponseError(reply))
    assert type(error) is StoreError and str(error) == reply


@pytest.mark.parametrize(("raised", "expected"), [
    (ClusterDownError("The cluster is down"), StoreRefused),  # a reply: the command was not run
    (ClusterError("TTL exhausted."), StoreUnavailable),  # redis-py gave up following redirections
    (SlotNotCoveredError('Slot "5" is not covered by the cluster.'), StoreUnavailable),
    (RedisClusterException("Redis Cluster cannot be connected."), StoreUnavailable),
    (CrossSlotTransactionError("keys of several slots in one transaction"), StoreError),  # a bug of ours
])
async def test_redis_cluster_errors_become_the_ports_exceptions(raised: Exception,
                                                                expected: type[Exception]) -> None:
    @translated
    async def command() -> None:
        raise raised

    with pytest.raises(expected) as caught:
        await command()
    assert type(caught.value) is expected
