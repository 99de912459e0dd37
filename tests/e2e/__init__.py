"""End to end: gateways, the local aggregator, RabbitMQ, the official clients and the examples over real sockets."""
