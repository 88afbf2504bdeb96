-- No query reads sales by product: `sales_product_id` only cost each sale one more page
-- written (products are never deleted, so the foreign key never looks sales up by product).
-- docs/benchmarks/happy-path.md.
DROP INDEX IF EXISTS sales_product_id;
