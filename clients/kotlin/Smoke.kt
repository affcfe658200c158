// The Kotlin bindings against a real server: attest under the dev policy, enrol, assess,
// identify (encrypted answer), erase; the production policy must refuse simulated evidence.
// Run by clients/python/tests/test_kotlin.py; prints one JSON answer per line.
//
// args: <base url> <dev policy> <production policy> <client key file> <enrol.json> <probe.json>

import uniffi.tee_risk_client.AttestationPolicy
import uniffi.tee_risk_client.Credential
import uniffi.tee_risk_client.TeeRiskClient
import uniffi.tee_risk_client.TeeRiskException
import java.io.File
import kotlin.system.exitProcess

/** The numbers of a features file: `{"features": [..]}` (the shipped samples' shape). */
fun features(path: String): List<Float> =
    File(path).readText().substringAfter("\"features\"").substringAfter('[').substringBefore(']')
        .split(',').map { it.trim().toFloat() }

fun main(args: Array<String>) {
    val (url, devPolicy, productionPolicy, clientKey, enrol, probe) = args
    val client = TeeRiskClient.attest(
        url, AttestationPolicy.load(devPolicy), Credential.fromFile("dev", clientKey),
    )
    println("{\"attested\":\"${client.attestation()?.tee}\",\"identity_kid\":\"${client.identityKid()}\"}")
    println(client.enroll("kotlin-user", features(enrol), null, "kiosk-1", false))
    // Identify before the assessment makes this probe a recent one (identify refuses those).
    println(client.identify(features(probe), null, null, 3u))
    println(client.assess("kotlin-user", features(probe), 0.97f, "kiosk-1", false))
    println(client.erase("kotlin-user", true))
    try {
        TeeRiskClient.attest(url, AttestationPolicy.load(productionPolicy), null)
        System.err.println("the production policy accepted simulated evidence")
        exitProcess(1)
    } catch (e: TeeRiskException.Untrusted) {
        println("{\"production_policy\":\"refused\"}")
    }
}

private operator fun <T> Array<T>.component6(): T = this[5]
