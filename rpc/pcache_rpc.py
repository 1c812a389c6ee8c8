#  SPDX-License-Identifier: BSD-3-Clause
#
# SPDK rpc.py plugin for the pcache module (libpcache.so): the pmem bdev and
# the pcache write-back cache bdev.
#
# Usage:
#   PYTHONPATH=/path/to/pcache/rpc:$PYTHONPATH \
#       spdk-rpc --plugin pcache_rpc bdev_pcache_create -c Pmem0 -b Base0 PC0
# (or scripts/rpc.py from an SPDK tree instead of spdk-rpc).
#
# Only the standard library is imported, so the plugin works with the
# rpc.py of an SPDK source tree and with the `spdk` package from PyPI.

import json

# bdev_pcache_flush returns only once every dirty byte is on the base bdev,
# which can take long for a big cache; rpc.py's default is 60 s.
FLUSH_TIMEOUT_DEFAULT = 3600.0


# Same output as spdk.rpc.cmd_parser's helpers of the same names; a None
# result (rpc.py --dry-run, batch mode) prints nothing.
def print_dict(d):
    if d is not None:
        print(json.dumps(d, indent=2))


def print_json(s):
    if s is not None:
        print(json.dumps(s, indent=2).strip('"'))


def _call(args, method, params):
    return args.client.call(method, {k: v for k, v in params.items() if v is not None})


def bdev_pmem_create(args):
    print_json(_call(args, 'bdev_pmem_create', {
        'name': args.name,
        'path': args.path,
        'size': args.size,
        'block_size': args.block_size,
    }))


MODES = ('writeback', 'writethrough', 'writearound', 'passthrough')
PROMOTIONS = ('always', 'nhit')


def bdev_pmem_delete(args):
    _call(args, 'bdev_pmem_delete', {'name': args.name})


def bdev_pcache_create(args):
    print_json(_call(args, 'bdev_pcache_create', {
        'name': args.name,
        'cache_bdev': args.cache_bdev,
        'base_bdev': args.base_bdev,
        'cache_mode': args.cache_mode,
        'data_crc': args.data_crc,
        'gc_percent': args.gc_percent,
        'writeback_batch_bytes': args.writeback_batch_bytes,
        'seq_cutoff_bytes': args.seq_cutoff_bytes,
        'base_lag_secs': args.base_lag_secs,
        'max_dirty_percent': args.max_dirty_percent,
        'promotion': args.promotion,
        'promotion_hits': args.promotion_hits,
        'uuid': args.uuid,
        'seg_size': args.seg_size,
        'force_format': True if args.force_format else None,
    }))


def bdev_pcache_delete(args):
    if args.flush:
        _long_call(args, 'bdev_pcache_delete', {'name': args.name, 'flush': True})
    else:
        _call(args, 'bdev_pcache_delete', {'name': args.name})


def bdev_pcache_set_options(args):
    _call(args, 'bdev_pcache_set_options', {
        'name': args.name,
        'gc_percent': args.gc_percent,
        'writeback_batch_bytes': args.writeback_batch_bytes,
        'seq_cutoff_bytes': args.seq_cutoff_bytes,
        'base_lag_secs': args.base_lag_secs,
        'max_dirty_percent': args.max_dirty_percent,
        'promotion': args.promotion,
        'promotion_hits': args.promotion_hits,
        'cache_mode': args.cache_mode,
    })


def _policy_args(p):
    p.add_argument('-D', '--max-dirty-percent', dest='max_dirty_percent', type=int,
                   help="""Dirty data, in percent of the cache (1-100), writeback lets build up: past it
                   nothing is kept back and writeback runs at full speed. Default: 100 (as space allows)""")
    p.add_argument('-P', '--promotion', dest='promotion', choices=PROMOTIONS,
                   help="""Which read misses are cached once the cache has filled: always, or nhit (a
                   block that missed --promotion-hits times recently). Default: nhit""")
    p.add_argument('-H', '--promotion-hits', dest='promotion_hits', type=int,
                   help='Misses (2-255) before nhit caches a block; implies nhit. Default: 3')


def _long_call(args, method, params):
    """A call that may take as long as writing the whole cache back."""
    client = args.client
    # The client's timeout is per connection (rpc.py -t); raise it for this
    # call only. An explicit --wait-timeout wins, then rpc.py -t, then the
    # default. Clients without a timeout attribute (Go client, dry run) are
    # left alone.
    wait = args.wait_timeout
    if wait is None:
        wait = args.timeout if getattr(args, 'timeout', None) is not None else FLUSH_TIMEOUT_DEFAULT
    old = getattr(client, 'timeout', None)
    if isinstance(old, (int, float)):
        client.timeout = wait
    try:
        return _call(args, method, params)
    finally:
        if isinstance(old, (int, float)):
            client.timeout = old


def bdev_pcache_flush(args):
    _long_call(args, 'bdev_pcache_flush', {'name': args.name})


def bdev_pcache_get_stats(args):
    print_dict(_call(args, 'bdev_pcache_get_stats', {'name': args.name}))


def _bool(s):
    v = s.lower()
    if v in ('true', 'yes', 'on', '1'):
        return True
    if v in ('false', 'no', 'off', '0'):
        return False
    raise ValueError(s)


_bool.__name__ = 'bool'


def spdk_rpc_plugin_initialize(subparsers):
    p = subparsers.add_parser('bdev_pmem_create',
                              help='Create a pmem bdev over a persistent-memory file (DAX or /dev/shm)')
    p.add_argument('path', help='Path to the pmem file (created if it does not exist; then -s is required)')
    p.add_argument('-n', '--name', help='Name of the pmem bdev. Example: Pmem0', required=True)
    p.add_argument('-s', '--size', type=int,
                   help='File size in bytes; required if the file does not exist')
    p.add_argument('-B', '--block-size', dest='block_size', type=int,
                   help='Block size in bytes (512-65536). Default: 4096')
    p.set_defaults(func=bdev_pmem_create)

    p = subparsers.add_parser('bdev_pmem_delete', help='Delete a pmem bdev (the file is kept)')
    p.add_argument('name', help='pmem bdev name')
    p.set_defaults(func=bdev_pmem_delete)

    p = subparsers.add_parser('bdev_pcache_create',
                              help="""Create a pcache bdev: a write-back cache on a pmem bdev in front of a
                              base bdev. If either bdev does not exist yet, the pcache is created when it
                              appears""")
    p.add_argument('name', help='Name of the pcache bdev. Example: PC0')
    p.add_argument('-c', '--cache-bdev', dest='cache_bdev', required=True,
                   help='Name of the pmem bdev holding the cache (see bdev_pmem_create)')
    p.add_argument('-b', '--base-bdev', dest='base_bdev', required=True,
                   help='Name of the base bdev the cache writes back to')
    p.add_argument('-m', '--cache-mode', dest='cache_mode', metavar='MODE', choices=MODES,
                   help="""Cache mode: writeback, writethrough, writearound or passthrough. Default: the
                   mode the cache holds (writeback for a new one)""")
    p.add_argument('--data-crc', dest='data_crc', type=_bool, metavar='true|false',
                   help="""Keep a CRC of cached data and check it on reads from the cache. Only used
                   when a new cache is formatted; default: the module's""")
    p.add_argument('-g', '--gc-percent', dest='gc_percent', type=int,
                   help="""Start garbage collection when more than this percentage (0-90) of cache
                   segments are in use. Default: the module's""")
    p.add_argument('-W', '--writeback-batch-bytes', dest='writeback_batch_bytes', type=int,
                   help="""Cap of the dirty bytes writeback takes in one batch (one base flush each);
                   1 writes back one kset per batch. Default: 32 MiB""")
    p.add_argument('-S', '--seq-cutoff-bytes', dest='seq_cutoff_bytes', type=int,
                   help="""Writes of 64 KiB or more bypass the cache once a sequential stream has run
                   this many bytes; 0 never bypasses. Default: 1 MiB""")
    p.add_argument('-L', '--base-lag-secs', dest='base_lag_secs', type=int,
                   help="""Seconds the base bdev may lag behind the cache: while the cache needs room,
                   dirty data younger than this stays in the cache instead of being written back
                   (0-86400; 0 writes everything back as soon as it can). Default: 30""")
    _policy_args(p)
    p.add_argument('-z', '--seg-size', dest='seg_size', type=int,
                   help="""Segment size in bytes for a new format: a power of two from 64 KiB to 1 GiB.
                   Default: 16 MiB, or smaller when the cache bdev would hold fewer than 8 segments""")
    p.add_argument('-u', '--uuid', dest='uuid',
                   help="""UUID of the pcache bdev. Recorded when the cache is formatted (a random one
                   if not given); when an existing cache is loaded it must be the recorded one""")
    p.add_argument('-f', '--force-format', dest='force_format', action='store_true',
                   help='Format the cache even if it holds a pcache; DISCARDS any dirty data on it')
    p.set_defaults(func=bdev_pcache_create)

    p = subparsers.add_parser('bdev_pcache_delete',
                              help="""Delete a pcache bdev. Dirty data stays on the pmem bdev and is
                              used when the pcache is created again""")
    p.add_argument('name', help='pcache bdev name')
    p.add_argument('--flush', action='store_true',
                   help="""Write every dirty byte back to the base bdev first, then delete; if writing
                   back fails, the pcache is not deleted""")
    p.add_argument('-w', '--wait-timeout', dest='wait_timeout', type=float,
                   help='With --flush: seconds to wait for it (default: rpc.py -t if given, else 3600)')
    p.set_defaults(func=bdev_pcache_delete)

    p = subparsers.add_parser('bdev_pcache_set_options', help='Change options of a running pcache bdev')
    p.add_argument('name', help='pcache bdev name')
    p.add_argument('-g', '--gc-percent', dest='gc_percent', type=int,
                   help='Start garbage collection when more than this percentage (0-90) of cache segments are in use')
    p.add_argument('-W', '--writeback-batch-bytes', dest='writeback_batch_bytes', type=int,
                   help='Cap of the dirty bytes writeback takes in one batch; 1 writes back one kset per batch')
    p.add_argument('-S', '--seq-cutoff-bytes', dest='seq_cutoff_bytes', type=int,
                   help='Sequential run after which writes of 64 KiB or more bypass the cache; 0 never bypasses')
    p.add_argument('-L', '--base-lag-secs', dest='base_lag_secs', type=int,
                   help='Seconds the base may lag behind the cache (0-86400); 0 keeps no dirty data back')
    _policy_args(p)
    p.add_argument('-m', '--cache-mode', dest='cache_mode', metavar='MODE', choices=MODES,
                   help="""Switch the cache mode: writeback, writethrough, writearound or passthrough.
                   Leaving writeback writes back everything dirty; new writes follow the new mode at once""")
    p.set_defaults(func=bdev_pcache_set_options)

    p = subparsers.add_parser('bdev_pcache_flush',
                              help="""Write every dirty byte of a pcache bdev back to its base bdev; returns
                              when done""")
    p.add_argument('name', help='pcache bdev name')
    p.add_argument('-w', '--wait-timeout', dest='wait_timeout', type=float,
                   help="""Seconds to wait for the flush to finish. Default: rpc.py's -t if given,
                   otherwise %d""" % FLUSH_TIMEOUT_DEFAULT)
    p.set_defaults(func=bdev_pcache_flush)

    p = subparsers.add_parser('bdev_pcache_get_stats',
                              help='Display state and statistics of all pcache bdevs or of one')
    p.add_argument('-b', '--name', help='Name of a pcache bdev. Example: PC0')
    p.set_defaults(func=bdev_pcache_get_stats)
