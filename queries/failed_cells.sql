-- Cells whose latest attempt failed, with the reason (load error, crash signal and stderr,
-- timeout, every image failed), and cells that ran but lost images to engine errors.
SELECT cell_id, model, tag, status, attempt, images_ok, images_failed, images_planned, error
FROM cells_latest
WHERE status <> 'ok' OR images_failed > 0
ORDER BY status, images_failed DESC, cell_id;
