-- Pairs of cells that differ only in the engine's optimization setting, with the change in
-- median latency: an "optimization" that makes a model slower shows a positive change.
-- (`deltann report` adds bootstrap intervals and flags changes beyond the cells' noise.)
WITH cell_p50 AS (
  SELECT c.cell_id, c.model, c.engine, c.engine_version, c.threads, c.batch_size, c.resize_filter,
         coalesce(c.ort_optimization, c.tract_plan) AS optimization,
         median(o.latency_ns) / 1e6 AS p50_ms
  FROM outputs o JOIN cells_latest c ON o.cell_id = c.cell_id
  GROUP BY c.cell_id, c.model, c.engine, c.engine_version, c.threads, c.batch_size, c.resize_filter,
           coalesce(c.ort_optimization, c.tract_plan)
),
p50 AS (
  SELECT *, CASE optimization
              WHEN 'disabled' THEN 0 WHEN 'decluttered' THEN 0 WHEN 'basic' THEN 1
              WHEN 'extended' THEN 2 WHEN 'all' THEN 3 WHEN 'optimized' THEN 3 END AS level
  FROM cell_p50
)
SELECT a.model, a.engine, a.engine_version, a.threads, a.batch_size,
       a.optimization AS from_optimization,
       b.optimization AS to_optimization,
       round(a.p50_ms, 3) AS from_p50_ms,
       round(b.p50_ms, 3) AS to_p50_ms,
       round(b.p50_ms / a.p50_ms - 1, 4) AS change
FROM p50 a JOIN p50 b
  ON a.model = b.model AND a.engine = b.engine AND a.engine_version = b.engine_version
 AND a.threads = b.threads AND a.batch_size = b.batch_size AND a.resize_filter = b.resize_filter
 AND a.level < b.level
ORDER BY change DESC, a.model, a.engine, a.engine_version, a.threads, a.batch_size, a.resize_filter,
         from_optimization, to_optimization;
