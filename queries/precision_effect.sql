-- Each precision variant against its base model in the same environment: how often the
-- variant's top-1 differs, and the accuracy each reaches (first repetition).
WITH o AS (
  SELECT p.image_id, p.top1, p.label, c.cell_id, c.model, c.family, c.precision, c.engine,
         c.engine_version, coalesce(c.ort_optimization, c.tract_plan) AS optimization,
         c.threads, c.batch_size, c.resize_filter
  FROM outputs p JOIN cells_latest c ON p.cell_id = c.cell_id
  WHERE p.repetition = 0
)
SELECT b.family, v.precision AS variant, b.engine, b.engine_version, b.optimization, b.threads,
       b.batch_size, b.resize_filter, count(*) AS images,
       round(avg(CASE WHEN b.top1 <> v.top1 THEN 1.0 ELSE 0.0 END), 4) AS flip_rate,
       round(avg(CASE WHEN b.top1 = b.label THEN 1.0 ELSE 0.0 END), 4) AS base_accuracy,
       round(avg(CASE WHEN v.top1 = v.label THEN 1.0 ELSE 0.0 END), 4) AS variant_accuracy
FROM o b JOIN o v
  ON b.image_id = v.image_id AND b.family = v.family AND b.model = b.family AND v.model <> v.family
 AND b.engine = v.engine AND b.engine_version = v.engine_version AND b.optimization = v.optimization
 AND b.threads = v.threads AND b.batch_size = v.batch_size AND b.resize_filter = v.resize_filter
GROUP BY b.family, v.precision, b.engine, b.engine_version, b.optimization, b.threads,
         b.batch_size, b.resize_filter
ORDER BY flip_rate DESC, b.family, variant, b.engine, b.engine_version, b.optimization, b.threads,
         b.batch_size, b.resize_filter;
