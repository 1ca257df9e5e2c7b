"""``python -m nas.search``: the former name of ``python -m nas.depth`` (kept for one release)."""

import sys

from nas.depth.search import SearchConfig, SearchResult, main, run_search, summarize, table2  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
