//! [`Store::read_many`] on PostgreSQL: the reads and the id draws of a request in one
//! statement.

use postgres::types::ToSql;

use super::{PostgresStore, backend, prefix_end, relation, sequence_id};
#[cfg(doc)]
use crate::store::Store;
use crate::store::{Fetched, KeyValue, Read, StoreError};

impl PostgresStore {
    /// [`Store::read_many`] in one statement, one round trip: each read is a branch of a
    /// `UNION ALL` whose rows carry the read's place in the list; the ids are one more
    /// branch (place -1, the id in the fourth column). A claim is an `INSERT … ON CONFLICT
    /// DO NOTHING RETURNING` in the statement's `WITH`, its branch what that returned: the
    /// statement is one transaction, so the claim is done with the reads or not at all.
    pub(super) fn read_at_once(
        &self,
        reads: &[Read<'_>],
        ids: usize,
    ) -> Result<Fetched, StoreError> {
        if reads.is_empty() && ids == 0 {
            return Ok(Fetched::default());
        }
        let id_count = i64::try_from(ids).unwrap_or(i64::MAX);
        let ends: Vec<Option<Vec<u8>>> = reads
            .iter()
            .map(|read| match read {
                Read::Get { .. } | Read::Claim { .. } => None,
                Read::Last { prefix, .. } => prefix_end(prefix),
            })
            .collect();
        let limits: Vec<i64> = reads
            .iter()
            .map(|read| match read {
                Read::Get { .. } | Read::Claim { .. } => 1,
                Read::Last { limit, .. } => i64::try_from(*limit).unwrap_or(i64::MAX),
            })
            .collect();
        let mut branches = Vec::with_capacity(reads.len());
        let mut claims = Vec::new();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        for (i, read) in reads.iter().enumerate() {
            branches.push(match read {
                Read::Get { table, key } => {
                    params.push(key);
                    format!(
                        "SELECT {i}, k, v, NULL::bigint FROM {} WHERE k = ${}",
                        relation(*table),
                        params.len()
                    )
                }
                Read::Last { table, prefix, .. } => {
                    params.push(prefix);
                    let mut condition = format!("k >= ${}", params.len());
                    if let Some(end) = &ends[i] {
                        params.push(end);
                        condition.push_str(&format!(" AND k < ${}", params.len()));
                    }
                    params.push(&limits[i]);
                    format!(
                        "(SELECT {i}, k, v, NULL::bigint FROM {} WHERE {condition} \
                         ORDER BY k DESC LIMIT ${})",
                        relation(*table),
                        params.len()
                    )
                }
                Read::Claim { table, key, value } => {
                    params.push(key);
                    params.push(value);
                    claims.push(format!(
                        "claim{i} AS (INSERT INTO {} (k, v) VALUES (${}, ${}) \
                         ON CONFLICT (k) DO NOTHING RETURNING k, v)",
                        relation(*table),
                        params.len() - 1,
                        params.len()
                    ));
                    format!("SELECT {i}, k, v, NULL::bigint FROM claim{i}")
                }
            });
        }
        if ids > 0 {
            params.push(&id_count);
            branches.push(format!(
                "(SELECT -1, NULL::bytea, NULL::bytea, nextval('tee_risk_ids') \
                 FROM generate_series(1, ${}::bigint))",
                params.len()
            ));
        }
        let mut sql = String::new();
        if !claims.is_empty() {
            sql = format!("WITH {} ", claims.join(", "));
        }
        sql.push_str(&branches.join(" UNION ALL "));
        let mut connection = self.connection()?;
        let statement = connection
            .statement(&sql)
            .map_err(|e| backend("prepare", e))?;
        let rows = connection
            .client
            .query(&statement, &params)
            .map_err(|e| backend("read", e))?;
        let mut answers: Vec<Vec<KeyValue>> = vec![Vec::new(); reads.len()];
        let mut fresh = Vec::with_capacity(ids);
        for row in rows {
            let place: i32 = row.get(0);
            if place == -1 {
                fresh.push(sequence_id(row.get(3))?);
                continue;
            }
            let answer = usize::try_from(place)
                .ok()
                .and_then(|place| answers.get_mut(place))
                .ok_or_else(|| backend("read", "a row of no read"))?;
            answer.push((row.get(1), row.get(2)));
        }
        // A UNION ALL keeps no order by itself: each `Last` is put back greatest key first.
        for answer in &mut answers {
            answer.sort_by(|a, b| b.0.cmp(&a.0));
        }
        fresh.sort_unstable();
        if fresh.len() != ids {
            return Err(backend("next id", "the wrong number of ids"));
        }
        Ok(Fetched {
            answers,
            ids: fresh,
        })
    }
}
