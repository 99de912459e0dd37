"""End-to-end tests of the gateway against the local aggregator over real sockets."""
