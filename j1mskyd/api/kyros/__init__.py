"""The Kyros dialect (the Kyros document's API): its API at /kyros/v1, so that a Kyros client whose base URL
is ``http://<pi>:8080/kyros`` works (docs/kyros.md).

A thin translation over the core's services, as the OpenAI and Anthropic front door is:
handlers parse the Kyros request, call the same service the native API calls, and answer in
the Kyros envelope (envelope.py); every refusal under /kyros, the pipeline's included, is
rendered by the envelope (route_table.RouteTable.envelope).  The routes are in routes.py.
"""
