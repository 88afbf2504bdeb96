//! All SQL of the Store: the catalog with its stock, and the sales ledger.
//!
//! The one rule that matters is in [`Inventory::sell`]: stock is decremented by a single
//! conditional `UPDATE`, so it can never go below zero whatever the concurrency, and the sale is
//! recorded atomically with it: in the same statement on PostgreSQL (one round trip), in the
//! same transaction on SQLite. With SQLite shared by several processes, a transaction must
//! write first: a deferred transaction that reads and then writes can fail with
//! `SQLITE_BUSY_SNAPSHOT` when another process wrote in between.

use std::time::Duration;

use ftshop_platform::db::{Backend, Db, is_unique_violation, now_millis};
use ftshop_platform::repository::{Read, ReadCache};
use ftshop_platform::sql::{self, Row};
use serde::{Deserialize, Serialize};

use crate::catalog::SeedProduct;

/// Products, stock and sales, over the service's database. Every call goes through the
/// database breaker ([`Db::run`]); the two catalog reads also have a [`ReadCache`] that answers
/// them, marked stale, while the database is away.
#[derive(Debug, Clone)]
pub struct Inventory {
    db: Db,
    product_cache: ReadCache<Product>,
    catalog_cache: ReadCache<Vec<Product>>,
}

/// A product as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub value_cents: i64,
    pub stock: i64,
}

/// A recorded sale of one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sale {
    pub transaction_id: String,
    pub product_id: String,
    pub value_cents: i64,
    /// Stock of the product right after this sale.
    pub stock_left: i64,
}

/// How a sell request ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SellOutcome {
    /// A unit was sold now.
    Sold(Sale),
    /// The idempotency key was already used for this product: the earlier sale, unchanged.
    Replayed(Sale),
}

impl SellOutcome {
    pub fn sale(&self) -> &Sale {
        match self {
            SellOutcome::Sold(sale) | SellOutcome::Replayed(sale) => sale,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SellError {
    #[error("no product with id {0:?}")]
    UnknownProduct(String),
    #[error("product {0:?} is out of stock")]
    OutOfStock(String),
    #[error("this Idempotency-Key was already used to buy product {sold:?}")]
    KeyReused { sold: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl Inventory {
    /// The inventory over `db`; reads answer cached values up to `max_staleness` old while the
    /// database is away (zero: never). Errors only on an invalid cache setting.
    pub fn new(db: Db, max_staleness: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            db,
            product_cache: ReadCache::new("store.product", max_staleness)?,
            catalog_cache: ReadCache::new("store.products", max_staleness)?,
        })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Writes the catalog when no product exists yet; returns how many products were inserted.
    /// Replicas starting together may both see an empty table: `ON CONFLICT DO NOTHING` makes
    /// the second insert a no-op instead of an error.
    pub async fn seed(&self, catalog: &[SeedProduct]) -> Result<u64, sqlx::Error> {
        let existing: i64 = sql::query("SELECT COUNT(*) FROM products")
            .fetch_one(&self.db)
            .await?
            .try_get_at(0)?;
        if existing > 0 {
            return Ok(0);
        }
        let mut tx = self.db.begin().await?;
        let mut inserted = 0;
        for product in catalog {
            inserted += sql::query(
                "INSERT INTO products (id, name, value_cents, stock) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&product.id)
            .bind(&product.name)
            .bind(product.value_cents)
            .bind(product.stock)
            .execute(&mut tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// One product, fresh from the database; while the database is away, the last one read
    /// (at most `max_staleness` old), marked stale. For display only: a sale reads the database.
    pub async fn read_product(&self, id: &str) -> Result<Read<Option<Product>>, sqlx::Error> {
        self.product_cache
            .read_optional(&self.db, id, || self.product_row(id))
            .await
    }

    /// Every product as [`products`](Self::products) orders them, fresh from the database;
    /// while it is away, the last list read (at most `max_staleness` old), marked stale.
    pub async fn read_products(&self) -> Result<Read<Vec<Product>>, sqlx::Error> {
        self.catalog_cache
            .read(&self.db, "all", || self.product_rows())
            .await
    }

    /// One product, from the database (through the breaker, never from the cache).
    pub async fn product(&self, id: &str) -> Result<Option<Product>, sqlx::Error> {
        self.db.run(|| self.product_row(id)).await
    }

    /// Every product: numeric ids first, in numeric order ("2" before "10"), then the others
    /// in lexical order. Sorted here rather than in SQL so both backends agree. From the
    /// database (through the breaker, never from the cache).
    pub async fn products(&self) -> Result<Vec<Product>, sqlx::Error> {
        self.db.run(|| self.product_rows()).await
    }

    async fn product_row(&self, id: &str) -> Result<Option<Product>, sqlx::Error> {
        sql::query("SELECT id, name, value_cents, stock FROM products WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db)
            .await?
            .map(|row| product_from_row(&row))
            .transpose()
    }

    async fn product_rows(&self) -> Result<Vec<Product>, sqlx::Error> {
        let mut products = sql::query("SELECT id, name, value_cents, stock FROM products")
            .fetch_all(&self.db)
            .await?
            .iter()
            .map(product_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        products.sort_by(|a, b| id_order(&a.id, &b.id));
        Ok(products)
    }

    /// Sells one unit of `product_id`. With an idempotency key, the first request sells and
    /// every later one (even a concurrent one) gets that same sale back.
    ///
    /// Through the database breaker. With a key, a sale whose connection was lost mid-way
    /// (COMMIT outcome unknown) is retried within the retry budget ([`Db::run_idempotent`]):
    /// the retry finds the committed sale by its key and answers it, or sells if nothing was
    /// committed. Without a key a sale is never retried (a replay could sell twice).
    pub async fn sell(
        &self,
        product_id: &str,
        key: Option<&str>,
    ) -> Result<SellOutcome, SellError> {
        // Domain outcomes travel inside `Ok`, so only database errors reach the breaker and
        // the retry classifier.
        let attempt = || async {
            match self.sell_once(product_id, key).await {
                Err(SellError::Database(err)) => Err(err),
                outcome => Ok(outcome),
            }
        };
        let outcome = match key {
            Some(_) => self.db.run_idempotent(attempt).await,
            None => self.db.run(attempt).await,
        };
        outcome.map_err(SellError::Database)?
    }

    async fn sell_once(
        &self,
        product_id: &str,
        key: Option<&str>,
    ) -> Result<SellOutcome, SellError> {
        // A key seen before is found by the sale's own insert (its unique index), not by
        // a lookup first: a replay is rare, and the lookup cost every sale a round trip to the
        // database (docs/benchmarks/happy-path.md). The decrement a replay made is rolled back.
        let sale = Sale {
            transaction_id: uuid::Uuid::now_v7().to_string(),
            product_id: product_id.to_owned(),
            value_cents: 0,
            stock_left: 0,
        };
        let recorded = match self.db.backend {
            Backend::Postgres => self.record_sale_in_one_statement(sale, key).await,
            Backend::Sqlite => self.record_sale_in_a_transaction(sale, key).await,
        };
        match (recorded, key) {
            (Ok(Some(sale)), _) => Ok(SellOutcome::Sold(sale)),
            (Ok(None), _) => {
                // Out of stock (or unknown) now, but the key may have sold a unit before.
                if let Some(key) = key
                    && let Some(sale) = self.sale_by_key(key).await?
                {
                    return replay(sale, product_id);
                }
                Err(match self.product_row(product_id).await? {
                    Some(_) => SellError::OutOfStock(product_id.to_owned()),
                    None => SellError::UnknownProduct(product_id.to_owned()),
                })
            }
            // A concurrent request with the same key committed first (our decrement was undone
            // with the failed insert): answer with its sale.
            (Err(err), Some(key)) if is_unique_violation(&err) => {
                match self.sale_by_key(key).await? {
                    Some(earlier) => replay(earlier, product_id),
                    None => Err(err.into()),
                }
            }
            (Err(err), _) => Err(err.into()),
        }
    }

    /// PostgreSQL: the decrement and the sale's insert in one statement (a data-modifying
    /// `WITH`, https://www.postgresql.org/docs/current/queries-with.html#QUERIES-WITH-MODIFYING),
    /// so a sale is one round trip to the server instead of four (BEGIN, UPDATE, INSERT,
    /// COMMIT), and the product's row lock is held for that one statement and its commit. The
    /// statement is atomic: a unique violation of the key undoes the decrement with it.
    /// `Ok(None)`: nothing sold (out of stock, or no such product).
    async fn record_sale_in_one_statement(
        &self,
        mut sale: Sale,
        key: Option<&str>,
    ) -> Result<Option<Sale>, sqlx::Error> {
        let row = sql::query(
            "WITH sold AS (\
                 UPDATE products SET stock = stock - 1 WHERE id = $1 AND stock > 0 \
                 RETURNING id, value_cents, stock) \
             INSERT INTO sales \
             (transaction_id, product_id, value_cents, stock_left, idempotency_key, created_at) \
             SELECT $2, id, value_cents, stock, $3, $4 FROM sold \
             RETURNING value_cents, stock_left",
        )
        .bind(&sale.product_id)
        .bind(&sale.transaction_id)
        .bind(key)
        .bind(now_millis())
        .fetch_optional(&self.db)
        .await?;
        let Some(row) = row else { return Ok(None) };
        sale.value_cents = row.try_get("value_cents")?;
        sale.stock_left = row.try_get("stock_left")?;
        Ok(Some(sale))
    }

    /// SQLite (no data-modifying `WITH`; a statement costs no round trip there): the
    /// decrement, then the insert, in one `BEGIN IMMEDIATE` transaction. Rolled back when
    /// nothing was sold or the insert failed. `Ok(None)`: nothing sold.
    async fn record_sale_in_a_transaction(
        &self,
        mut sale: Sale,
        key: Option<&str>,
    ) -> Result<Option<Sale>, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let sold = sql::query(
            "UPDATE products SET stock = stock - 1 WHERE id = $1 AND stock > 0 \
             RETURNING value_cents, stock",
        )
        .bind(&sale.product_id)
        .fetch_optional(&mut tx)
        .await?;
        let Some(row) = sold else {
            tx.rollback().await?;
            return Ok(None);
        };
        sale.value_cents = row.try_get("value_cents")?;
        sale.stock_left = row.try_get("stock")?;
        let recorded = sql::query(
            "INSERT INTO sales \
             (transaction_id, product_id, value_cents, stock_left, idempotency_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&sale.transaction_id)
        .bind(&sale.product_id)
        .bind(sale.value_cents)
        .bind(sale.stock_left)
        .bind(key)
        .bind(now_millis())
        .execute(&mut tx)
        .await;
        match recorded {
            Ok(_) => {
                tx.commit().await?;
                Ok(Some(sale))
            }
            // Undo the decrement before the caller looks the key up (the lookup needs the
            // connection this transaction holds).
            Err(err) if is_unique_violation(&err) => {
                tx.rollback().await?;
                Err(err)
            }
            // Dropping the transaction rolls it back (SQLite may already have ended it after
            // a storage fault; a connection still inside one is reopened at its next use) and
            // keeps this error, which is what the storage-fault classification needs.
            Err(err) => Err(err),
        }
    }

    async fn sale_by_key(&self, key: &str) -> Result<Option<Sale>, sqlx::Error> {
        let row = sql::query(
            "SELECT transaction_id, product_id, value_cents, stock_left FROM sales \
             WHERE idempotency_key = $1",
        )
        .bind(key)
        .fetch_optional(&self.db)
        .await?;
        row.map(|row| {
            Ok(Sale {
                transaction_id: row.try_get("transaction_id")?,
                product_id: row.try_get("product_id")?,
                value_cents: row.try_get("value_cents")?,
                stock_left: row.try_get("stock_left")?,
            })
        })
        .transpose()
    }
}

fn replay(sale: Sale, requested: &str) -> Result<SellOutcome, SellError> {
    if sale.product_id == requested {
        Ok(SellOutcome::Replayed(sale))
    } else {
        Err(SellError::KeyReused {
            sold: sale.product_id,
        })
    }
}

/// Numeric ids (digits only) before the others, numerically; the rest lexically.
fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    let numeric = |id: &str| id.bytes().all(|c| c.is_ascii_digit());
    match (numeric(a), numeric(b)) {
        (true, true) => {
            let (x, y) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
            x.len()
                .cmp(&y.len())
                .then_with(|| x.cmp(y))
                .then_with(|| a.cmp(b))
        }
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => a.cmp(b),
    }
}

fn product_from_row(row: &Row) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        value_cents: row.try_get("value_cents")?,
        stock: row.try_get("stock")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_numerically_then_lexically() {
        let mut ids = vec!["b", "10", "2", "a", "1", "007", "a10", "a2"];
        ids.sort_by(|a, b| id_order(a, b));
        assert_eq!(ids, ["1", "2", "007", "10", "a", "a10", "a2", "b"]);
    }
}
