"""Quality of the savings: which optimisation answered a request, judges that compare an
answer with the reference path's, the shadow spend cap and the Wilson interval. The gateway
runs shadows (``gateway/shadow.py``); ``metering/quality_queries.py`` reads their rows."""
