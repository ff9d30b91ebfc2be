-- Cells by median per-image latency, slowest first, with the spread and the throughput.
-- Where the time goes, per environment (all repetitions count).
SELECT c.cell_id,
       c.model,
       c.tag,
       count(*) AS rows,
       round(median(o.latency_ns) / 1e6, 3) AS p50_ms,
       round(min(o.latency_ns) / 1e6, 3) AS min_ms,
       round(max(o.latency_ns) / 1e6, 3) AS max_ms,
       round(count(*) / (sum(o.latency_ns) / 1e9), 1) AS images_per_s
FROM outputs o JOIN cells_latest c ON o.cell_id = c.cell_id
GROUP BY c.cell_id, c.model, c.tag
ORDER BY p50_ms DESC, c.cell_id;
