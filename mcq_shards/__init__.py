"""mcq-shards: convert raw CC3M, WebVid, MSR-VTT, WebDataset or CSV data into tar shards for mcq-ds.

The shard format (one JSON member with the caption and its phrase spans, plus the media normalised for
fast decoding) is the contract between this converter and every loader in ``mcq_ds``; see ``README.md``.
"""

__version__ = "1.0.0"
