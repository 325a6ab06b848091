"""The read-only web view: the tracker in a browser, from the index and the branch, as WSGI."""
