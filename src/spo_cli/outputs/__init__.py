"""Everything spo writes or reads back, in three parts:

- `naming`: file names (slugs, stems, free names, names that stay inside the output folder);
- `metadata`: what an image records (the sidecar schema, A1111 parameters, EXIF) and reading it back;
- `files`: how it reaches the disk (atomic writes, image + sidecar pairs, resume checks, the batch
  manifest, the output-folder lock).
"""
