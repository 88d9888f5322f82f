//! The Admin service: tenants, tokens, quotas, reservations, usage (admins only).

use super::*;

#[tonic::async_trait]
impl pb::admin_server::Admin for Api {
    async fn create_tenant(&self, req: Request<pb::CreateTenantRequest>) -> Result<Response<pb::TenantInfo>, Status> {
        Self::admin(&self.caller(&req).await?)?;
        let r = req.into_inner();
        let weight = if r.weight == 0.0 { 1.0 } else { r.weight };
        let store = self.store.clone();
        let t = blocking(move || store.create_tenant(&r.name, weight)).await?;
        Ok(Response::new(tenant_info(t)))
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        Self::admin(&self.caller(&req).await?)?;
        let r = req.into_inner();
        let store = self.store.clone();
        let ts = blocking(move || store.tenants()).await?;
        let (ts, next_page_token) =
            crate::paging::after_key(ts, |t| (t.created_at, t.id.as_str()), r.page_size, &r.page_token)
                .map_err(Status::invalid_argument)?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: ts.into_iter().map(tenant_info).collect(),
            next_page_token,
        }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let who = self.caller(&req).await?;
        Self::admin(&who)?;
        let r = req.into_inner();
        let role = Role::parse(&r.role).map_err(|e| status(e.into()))?;
        let tenant = if r.tenant.is_empty() {
            None
        } else {
            let (store, name) = (self.store.clone(), r.tenant.clone());
            Some(blocking(move || store.tenant_by_name(&name)).await?)
        };
        if r.ttl_s < 0 {
            return Err(Status::invalid_argument(
                "ttl_s must be positive (seconds), or 0 for a token that does not expire",
            ));
        }
        let expires = (r.ttl_s > 0).then(|| store::now_ms().saturating_add(r.ttl_s.saturating_mul(1000)));
        let token = new_token().map_err(|e| Status::internal(e.to_string()))?;
        let mqtt_user = format!("lw-{}", &token_hash(&token)[..16]);
        let mqtt_password = crate::telemetry::mosquitto::new_password().map_err(|e| Status::internal(e.to_string()))?;
        let mqtt_hash =
            crate::telemetry::mosquitto::password_hash(&mqtt_password).map_err(|e| Status::internal(e.to_string()))?;
        let (store, hash, tid) = (self.store.clone(), token_hash(&token), tenant.as_ref().map(|t| t.id.clone()));
        let (user, tid2) = (mqtt_user.clone(), tid.clone());
        let p = blocking(move || {
            let p = store.create_principal(tid.as_deref(), role, &hash, Some((&user, &mqtt_hash)))?;
            if let Some(at) = expires {
                store.set_principal_expiry(&p.id, at)?;
            }
            Ok(p)
        })
        .await?;
        self.refresh_mqtt_identities().await?;
        let for_whom = if r.tenant.is_empty() { "the lab".to_string() } else { format!("tenant {}", r.tenant) };
        let lifetime =
            expires.map_or_else(|| "no expiry".to_string(), |at| format!("expires {}", crate::clock::rfc3339(at)));
        self.record_audit(&who, "token_created", &p.id, "", format!("{} for {for_whom}, {lifetime}", role.as_str()))
            .await?;
        Ok(Response::new(pb::CreateTokenResponse {
            token,
            principal_id: p.id,
            role: role.as_str().into(),
            tenant: r.tenant,
            expires_at_ms: expires.unwrap_or(0),
            mqtt_topics: crate::telemetry::MqttIdentity {
                username: mqtt_user.clone(),
                password_hash: String::new(),
                role,
                tenant_id: tid2,
            }
            .reads()
            .join(" "),
            mqtt_username: mqtt_user,
            mqtt_password,
            mqtt_host: self.mqtt_broker.as_ref().map(|b| b.0.clone()).unwrap_or_default(),
            mqtt_port: self.mqtt_broker.as_ref().map_or(0, |b| u32::from(b.1)),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        Self::admin(&self.caller(&req).await?)?;
        let (store, id) = (self.store.clone(), req.into_inner().principal_id);
        blocking(move || store.revoke_principal(&id)).await?;
        self.refresh_mqtt_identities().await?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn set_quotas(&self, req: Request<pb::SetQuotasRequest>) -> Result<Response<pb::TenantInfo>, Status> {
        let who = self.caller(&req).await?;
        Self::admin(&who)?;
        let r = req.into_inner();
        if r.max_concurrent_runs < 0 || !(r.device_hours_per_month >= 0.0 && r.device_hours_per_month.is_finite()) {
            return Err(Status::invalid_argument("quotas are 0 (no limit) or positive"));
        }
        let store = self.store.clone();
        let t = blocking(move || {
            let t = store.tenant_by_name(&r.tenant)?;
            let runs = (r.max_concurrent_runs > 0).then_some(r.max_concurrent_runs);
            let hours = (r.device_hours_per_month > 0.0).then_some(r.device_hours_per_month);
            store.set_quotas(&t.id, runs, hours, r.priority)?;
            store.tenant(&t.id)
        })
        .await?;
        let detail = format!(
            "at most {} runs at once, {} device-hours a month, priority {} (0: no limit)",
            t.max_concurrent_runs.unwrap_or(0),
            t.device_hours_per_month.unwrap_or(0.0),
            t.priority
        );
        self.record_audit(&who, "quotas_set", &format!("tenant {}", t.name), "", detail).await?;
        Ok(Response::new(tenant_info(t)))
    }

    async fn reserve(&self, req: Request<pb::ReserveRequest>) -> Result<Response<pb::ReservationInfo>, Status> {
        Self::admin(&self.caller(&req).await?)?;
        let r = req.into_inner();
        let known = self.site.instruments.iter().any(|i| i.id == r.instrument || i.class.as_str() == r.instrument);
        if !known {
            return Err(Status::not_found(format!(
                "no instrument or instrument class `{}` at this site",
                r.instrument
            )));
        }
        if r.ends_at_ms <= r.starts_at_ms {
            return Err(Status::invalid_argument("a reservation must end after it starts (ends_at_ms > starts_at_ms)"));
        }
        let store = self.store.clone();
        let row = blocking(move || {
            let t = store.tenant_by_name(&r.tenant)?;
            let row = store::Reservation {
                id: store::new_id("rsv"),
                tenant_id: t.id,
                instrument_class: r.instrument,
                starts_at: r.starts_at_ms,
                ends_at: r.ends_at_ms,
            };
            store.add_reservation(&row)?;
            Ok((row, t.name))
        })
        .await?;
        Ok(Response::new(reservation_info(row.0, row.1)))
    }

    async fn reservations(
        &self,
        req: Request<pb::ReservationsRequest>,
    ) -> Result<Response<pb::ReservationsResponse>, Status> {
        Self::admin(&self.caller(&req).await?)?;
        let r = req.into_inner();
        let (page_size, page_token) = (r.page_size, r.page_token.clone());
        let store = self.store.clone();
        let (rows, tenants) = blocking(move || {
            let tid = if r.tenant.is_empty() { None } else { Some(store.tenant_by_name(&r.tenant)?.id) };
            Ok((store.reservations(tid.as_deref())?, store.tenants()?))
        })
        .await?;
        let name = |id: &str| tenants.iter().find(|t| t.id == id).map_or(String::new(), |t| t.name.clone());
        let (rows, next_page_token) =
            crate::paging::after_key(rows, |x| (x.starts_at, x.id.as_str()), page_size, &page_token)
                .map_err(Status::invalid_argument)?;
        Ok(Response::new(pb::ReservationsResponse {
            reservations: rows
                .into_iter()
                .map(|x| {
                    let n = name(&x.tenant_id);
                    reservation_info(x, n)
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn usage(&self, req: Request<pb::UsageRequest>) -> Result<Response<pb::UsageResponse>, Status> {
        Self::admin(&self.caller(&req).await?)?;
        let r = req.into_inner();
        let (page_size, page_token) = (r.page_size, r.page_token.clone());
        let (tenant_filter, since_ms) = ((!r.tenant.is_empty()).then(|| r.tenant.clone()), r.since_ms);
        let store = self.store.clone();
        let units = self.site.storage.clone();
        let (lines, consumed, stored, tenants) = blocking(move || {
            let tid = if r.tenant.is_empty() { None } else { Some(store.tenant_by_name(&r.tenant)?.id) };
            // Container-days per tenant and storage condition, from each container's moves.
            let mut stored: std::collections::BTreeMap<(String, String), f64> = Default::default();
            for (tenant, _, history) in store.container_histories(tid.as_deref())? {
                for (condition, days) in crate::storage::container_days(&units, &history, r.since_ms, store::now_ms()) {
                    *stored.entry((tenant.clone(), condition)).or_default() += days;
                }
            }
            let consumed = store.consumed(tid.as_deref(), r.since_ms)?;
            Ok((store.usage(tid.as_deref(), r.since_ms)?, consumed, stored, store.tenants()?))
        })
        .await?;
        // One line per tenant, instrument class and service class, then per tenant and item: the
        // key is the tenant id (no `/` in it), then the classes, or `~` and the item (after
        // every class). Device time is priced at the class's rate times the service's factor.
        let rate =
            |class: &str| self.site.prices.per_hour.iter().find(|(c, _)| c.as_str() == class).map_or(0.0, |(_, p)| *p);
        let mut keyed: Vec<(String, pb::UsageLine)> = lines
            .into_iter()
            .map(|u| {
                let device_hours = u.device_seconds / 3600.0;
                let price = rate(&u.instrument_class) * self.site.class_factor(u.service_class);
                let line = pb::UsageLine {
                    tenant: u.tenant_id.clone(),
                    instrument_class: u.instrument_class.clone(),
                    device_hours,
                    amount: protocols::consumables::amount(device_hours, price),
                    service_class: u.service_class.as_str().into(),
                    ..Default::default()
                };
                (format!("{}/{}/{}", u.tenant_id, u.instrument_class, u.service_class), line)
            })
            .collect();
        let mut items: std::collections::BTreeMap<(String, String), (String, f64)> = Default::default();
        for c in consumed {
            items.entry((c.tenant_id, c.item)).or_insert((c.unit, 0.0)).1 += c.quantity;
        }
        for ((tenant, condition), days) in stored {
            items.insert((tenant, format!("storage {condition}")), ("container-days".into(), days));
        }
        for ((tenant, item), (unit, quantity)) in items {
            let price = protocols::consumables::price_of(&self.site, &item, &unit).unwrap_or(0.0);
            let amount = protocols::consumables::amount(quantity, price);
            let key = format!("{tenant}/~{item}");
            keyed.push((key, pb::UsageLine { tenant, item, unit, quantity, amount, ..Default::default() }));
        }
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let (keyed, next_page_token) =
            crate::paging::after_key(keyed, |(k, _)| (0, k.as_str()), page_size, &page_token)
                .map_err(Status::invalid_argument)?;
        let name = |id: &str| tenants.iter().find(|t| t.id == id).map_or(id.to_string(), |t| t.name.clone());
        let service = if page_token.is_empty() { self.service(tenant_filter, since_ms).await? } else { Vec::new() };
        Ok(Response::new(pb::UsageResponse {
            lines: keyed.into_iter().map(|(_, u)| pb::UsageLine { tenant: name(&u.tenant), ..u }).collect(),
            next_page_token,
            service: service
                .into_iter()
                .map(|t| pb::TenantService {
                    tenant: name(&t.tenant_id),
                    runs: t.runs as u32,
                    mean_slowdown: t.mean_slowdown,
                    max_slowdown: t.max_slowdown,
                    promised: t.promised as u32,
                    promises_kept: t.promises_kept as u32,
                })
                .collect(),
        }))
    }
}

impl Api {
    /// How each tenant's runs that succeeded since `since_ms` were served (`crate::service`).
    async fn service(
        &self,
        tenant: Option<String>,
        since_ms: i64,
    ) -> Result<Vec<crate::service::TenantService>, Status> {
        let (store, site) = (self.store.clone(), self.site.clone());
        let served = blocking(move || {
            let tid = match &tenant {
                Some(name) => Some(store.tenant_by_name(name)?.id),
                None => None,
            };
            let mut out = Vec::new();
            for run in store.runs(tid.as_deref(), &[RunState::Succeeded])? {
                let Some(finished_ms) = run.finished_at.filter(|&f| f >= since_ms) else { continue };
                let Ok(plan) = serde_json::from_str::<protocols::plan::RunPlan>(&run.plan_json) else { continue };
                let promised_ms = crate::service::first_promise_ms(&store.events(None, &run.id, 0)?);
                out.push(crate::service::Served {
                    tenant_id: run.tenant_id.clone(),
                    submitted_ms: run.submitted_at,
                    finished_ms,
                    solo_s: protocols::quote::quote(&plan, &site).duration_s,
                    promised_ms,
                });
            }
            Ok::<_, store::StoreError>(out)
        })
        .await?;
        Ok(crate::service::per_tenant(&served, self.time_scale))
    }
}

fn reservation_info(r: store::Reservation, tenant: String) -> pb::ReservationInfo {
    pb::ReservationInfo {
        id: r.id,
        tenant,
        instrument: r.instrument_class,
        starts_at_ms: r.starts_at,
        ends_at_ms: r.ends_at,
    }
}

fn tenant_info(t: store::Tenant) -> pb::TenantInfo {
    pb::TenantInfo {
        id: t.id,
        name: t.name,
        weight: t.weight,
        max_concurrent_runs: t.max_concurrent_runs.unwrap_or(0),
        device_hours_per_month: t.device_hours_per_month.unwrap_or(0.0),
        priority: t.priority,
    }
}
