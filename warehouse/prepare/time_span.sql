-- How many ratings a run as of $as_of (Unix seconds) keeps, and the time span of all of them (its error says it
-- when it keeps none). Parameters: $ratings (the parsed dataset's ratings.parquet), $as_of.
SELECT count(*) FILTER (WHERE timestamp <= $as_of), min(timestamp), max(timestamp) FROM read_parquet($ratings)
