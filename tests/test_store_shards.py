"""shards.py writes a featurize block's shard itself (zarr-python's encoding was an eighth of the
pass): the files must be byte for byte the ones zarr writes, for every case a block meets."""

import os

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec

from dfdetect.store.shards import ShardFiles


def _files(root):
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(root) for f in names}


def _array(path, n, shape, rows, block, **kw):
    return zarr.open_group(str(path), mode="w").create_array(
        "x", shape=(n, *shape), dtype="float16", fill_value=np.nan, chunks=(rows, *shape),
        shards=(block, *shape), compressors=kw.get("compressors", [Crc32cCodec()]))


@pytest.mark.parametrize("n, shape, rows, block", [(200, (2, 8, 5), 16, 128), (70, (6, 7), 32, 32),
                                                   (50, (11,), 16, 16)])
def test_written_shards_are_zarrs_bytes(tmp_path, n, shape, rows, block):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, *shape)).astype(np.float16)
    x[16:32] = np.nan   # a whole chunk of failed clips: zarr leaves it out of the shard
    x[40] = np.nan      # one failed clip inside a chunk
    by_zarr = _array(tmp_path / "zarr.zarr", n, shape, rows, block)
    direct = _array(tmp_path / "d.zarr", n, shape, rows, block)
    writer = ShardFiles.of(direct)
    for start in range(0, n, block):   # the last block is short: its chunk is padded with the fill
        by_zarr[start:start + block] = x[start:start + block]
        assert writer.write_shard(start, x[start:start + block])
    expected, got = _files(tmp_path / "zarr.zarr" / "x" / "c"), _files(tmp_path / "d.zarr" / "x" / "c")
    assert expected and got == expected
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "d.zarr" / "x"))[:], x)


def test_an_all_failed_block_removes_its_shard_as_zarr_does(tmp_path):
    a = _array(tmp_path / "s.zarr", 32, (3,), 16, 32)
    a[:] = np.ones((32, 3), np.float16)   # a shard written by an earlier run
    assert ShardFiles.of(a).write_shard(0, np.full((32, 3), np.nan, np.float16))
    assert _files(tmp_path / "s.zarr" / "x" / "c") == {}
    assert np.isnan(a[:]).all()


def test_what_is_not_one_whole_row_chunked_shard_is_left_to_zarr(tmp_path):
    a = _array(tmp_path / "s.zarr", 64, (3,), 16, 32)
    writer = ShardFiles.of(a)
    ones = np.ones((32, 3), np.float16)
    assert not writer.write_shard(16, ones)         # not shard-aligned
    assert not writer.write_shard(0, ones[:20])     # part of a shard
    g = zarr.open_group(str(tmp_path / "w.zarr"), mode="w")   # WavLM's layout: chunks split a layer axis
    layers = g.create_array("w", shape=(32, 2, 4, 3), dtype="float16", fill_value=np.nan, chunks=(16, 1, 4, 3),
                            shards=(32, 2, 4, 3), compressors=[Crc32cCodec()])
    assert not ShardFiles.of(layers).write_shard(0, np.ones((32, 2, 4, 3), np.float16))
    assert _files(tmp_path / "s.zarr" / "x") == {} or "c" not in os.listdir(tmp_path / "s.zarr" / "x")
