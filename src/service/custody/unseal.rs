//! `POST /v1/custody/unseal`: shares gathered, keys rebuilt and checked, the database opened.

use super::*;

impl Gate {
    /// `POST /v1/custody/unseal`: one custodian's share; the k-th rebuilds the key, which
    /// must open the database, and the service serves.
    pub fn unseal(
        &self,
        request: &UnsealRequest,
        now: i64,
    ) -> Result<SignedResponse, CustodyError> {
        self.handle(
            "custody_share_refused",
            &request.custodian,
            now,
            Self::check_sealed,
            |custody, state| self.try_unseal(custody, state, request, now),
        )
    }

    fn try_unseal(
        &self,
        custody: &Custody,
        state: &mut CustodyState,
        request: &UnsealRequest,
        now: i64,
    ) -> Result<SignedResponse, CustodyError> {
        let custodian = custody.custodian(&request.custodian)?;
        let (attempt, sealed) = request
            .verify(&custodian.key)
            .map_err(|e| signature_or_malformed(e, &request.custodian))?;
        if attempt != state.attempt {
            return Err(CustodyError::StaleAttempt);
        }
        let plain = self.open_share(&request.kid, &sealed, now)?;
        let share_key = KeyId(plain.key_id);
        let needed = match &state.needed {
            Some(needed) => needed.clone(),
            None => match custody.opener.key_ids().map_err(unavailable)? {
                None => return Err(CustodyError::NotInitialised),
                // A database from before the key registry names no key: the open checks it.
                Some(ids) if ids.is_empty() => vec![share_key],
                Some(ids) => ids,
            },
        };
        if !needed.contains(&share_key) {
            return Err(CustodyError::ShareMismatch(format!(
                "the share is of master key {share_key}, which is not a key of this database"
            )));
        }
        state.needed = Some(needed.clone());
        // The shares of one key are of one split: the same k and n. (The roster may have
        // changed since the split, to be re-split by a rekey: its k is a floor, not a match.)
        if let Some(held) = state.held.iter().find(|h| h.key_id == share_key)
            && (held.split) != (plain.threshold, plain.shares)
        {
            return Err(CustodyError::ShareMismatch(format!(
                "the share is of a {} of {} split; the shares of master key {share_key} held so \
                 far are of a {} of {} split",
                plain.threshold, plain.shares, held.split.0, held.split.1
            )));
        }
        let replayed = state.held.iter().any(|h| {
            h.key_id == share_key
                && (h.custodian == request.custodian || h.share.index == plain.index)
        });
        if replayed {
            return Err(CustodyError::ShareReplayed(request.custodian.clone()));
        }
        state.held.push(Held {
            custodian: request.custodian.clone(),
            share: Share {
                index: plain.index,
                value: plain.value,
            },
            key_id: share_key,
            split: (plain.threshold, plain.shares),
        });
        state.record(Event::new(
            now,
            "custody_share_accepted",
            &share_key.to_string(),
            vec![request.custodian.clone()],
        ));
        tracing::info!(custodian = %request.custodian, key_id = %share_key,
            received = state.held.len(), threshold = custody.roster.threshold,
            "custodian share accepted");
        // Per key: the roster's k, or the split's if it was larger (then fewer could not
        // rebuild it anyway).
        let complete = needed.iter().all(|id| {
            let of_key: Vec<&Held> = state.held.iter().filter(|h| h.key_id == *id).collect();
            let k = of_key.first().map_or(custody.roster.threshold, |h| {
                h.split.0.max(custody.roster.threshold)
            });
            !of_key.is_empty() && of_key.len() >= usize::from(k)
        });
        if complete {
            self.rebuild(custody, state, &needed, now)?;
        }
        let sealed = self.is_sealed();
        let reply = UnsealReply {
            typ: UNSEAL_TYP.into(),
            attempt: request.attempt.clone(),
            custodian: request.custodian.clone(),
            state: if sealed { "sealed" } else { "unsealed" }.into(),
            received: state.held.iter().map(|h| h.custodian.clone()).collect(),
            threshold: custody.roster.threshold,
            key_id: state.master.as_ref().map(|m| m.key_id().to_string()),
            needed: state.needed_summary(),
        };
        self.sign(&reply)
    }

    /// Decrypts a share sent to one of our encryption keys.
    fn open_share(&self, kid: &str, sealed: &[u8], now: i64) -> Result<SharePlain, CustodyError> {
        let key = match self.keys.lookup(kid, now) {
            KidLookup::Live(key) => key,
            KidLookup::Retired | KidLookup::Unknown => {
                return Err(CustodyError::ShareInvalid(
                    "it is sealed to an encryption key this service does not hold now: \
                     fetch GET /v1/keys and seal it again"
                        .into(),
                ));
            }
        };
        let bytes: SecretBytes<SHARE_PLAIN_LEN> = key
            .decrypt_der_exact(sealed)
            .map_err(|_| CustodyError::ShareInvalid("SM2 decryption failed".into()))?;
        SharePlain::from_bytes(&bytes).map_err(|e| CustodyError::ShareInvalid(e.to_string()))
    }

    /// k shares of every needed key held: rebuild each, check it is the key its shares
    /// name, open the database (which key is the active one is the database's to say: each
    /// is tried as the current key, the others decrypt-only). A failure starts a new
    /// attempt (every share must be sent again); a store fault keeps the shares.
    fn rebuild(
        &self,
        custody: &Custody,
        state: &mut CustodyState,
        needed: &[KeyId],
        now: i64,
    ) -> Result<(), CustodyError> {
        let who: Vec<String> = state.held.iter().map(|h| h.custodian.clone()).collect();
        let outcome = rebuild_keys(&state.held, needed).and_then(|keys| {
            let mut refusals = Vec::new();
            for current in 0..keys.len() {
                let previous: Vec<MasterKey> = keys
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != current)
                    .map(|(_, key)| key.duplicate())
                    .collect();
                match custody
                    .opener
                    .open(&keys[current], &previous, self.keys.clone())
                {
                    Ok(service) => return Ok((keys[current].duplicate(), previous, service)),
                    Err(OpenError::Refused(why)) => refusals.push(why),
                    Err(OpenError::Fault(why)) => return Err(CustodyError::Unavailable(why)),
                }
            }
            Err(CustodyError::ShareMismatch(format!(
                "the rebuilt keys do not open the database ({}): a new attempt has begun",
                refusals.join("; ")
            )))
        });
        match outcome {
            Ok((master, previous, service)) => {
                let ids: Vec<String> = needed.iter().map(ToString::to_string).collect();
                state.held.clear();
                state.needed = None;
                state.attempt = new_attempt()?;
                tracing::info!(key_id = %master.key_id(), keys = ?ids,
                    "unsealed: the master key is rebuilt; serving");
                state.master = Some(master);
                state.previous = previous;
                let mut event = Event::new(now, "custody_unsealed", "", who);
                event.key_ids = ids;
                state.record(event);
                self.set_open(state, service);
                Ok(())
            }
            Err(CustodyError::Unavailable(why)) => {
                // The store, not the shares: keep them, the next share (or a resend) retries.
                state.held.pop();
                Err(CustodyError::Unavailable(why))
            }
            Err(error) => {
                state.held.clear();
                state.needed = None;
                state.attempt = new_attempt()?;
                Err(error)
            }
        }
    }
}

/// Rebuilds each needed key from its shares and checks it is the key they name.
fn rebuild_keys(held: &[Held], needed: &[KeyId]) -> Result<Vec<MasterKey>, CustodyError> {
    needed
        .iter()
        .map(|id| {
            let shares: Vec<Share> = held
                .iter()
                .filter(|h| h.key_id == *id)
                .map(|h| h.share.copy())
                .collect();
            let key = MasterKey::from_secret(
                shamir::combine(&shares).map_err(|_| CustodyError::Internal)?,
            );
            if key.key_id() != *id {
                return Err(CustodyError::ShareMismatch(format!(
                    "the {} shares of master key {id} do not rebuild it (one of them is not of \
                     that split): a new attempt has begun, send every share again",
                    shares.len()
                )));
            }
            Ok(key)
        })
        .collect()
}
