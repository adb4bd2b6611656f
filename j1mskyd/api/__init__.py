"""HTTP transport: middlewares, thin handlers and the route table."""
